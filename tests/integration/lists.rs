//! Lists while the server runs: hot reload (watch, save-by-rename, SIGHUP), bad lists and
//! configs keeping the old lists in force, no query lost during reloads, technicians' edits,
//! the change-control log, and remote sources with their last good copy.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::Value;

use crate::fixture::{Fixture, Zone};
use crate::harness::{addresses, run, Ask, Server, Setup};
use crate::http::{ListServer, Reply};

fn blocked(server: &Server, name: &str) -> bool {
    addresses(&server.query(name, RecordType::A)) == ["0.0.0.0"]
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(server: &Server, needle: &str) -> usize {
    server.log().matches(needle).count()
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The change-control log as `schoolgate changes --json` prints it.
fn changes(setup: &Setup) -> Vec<Value> {
    let (ok, out, err) = run(&setup.config_path(), &["changes", "--json"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn changes_by(setup: &Setup, by: &str, category: &str) -> Vec<Value> {
    changes(setup)
        .into_iter()
        .filter(|c| c["by"] == by && c["category"] == category)
        .collect()
}

#[test]
fn a_line_added_to_a_list_blocks_within_two_seconds_and_is_logged_as_a_file_edit() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);
    assert_eq!(
        addresses(&server.query("www.example.org", RecordType::A)),
        ["192.0.2.11"]
    );
    assert!(wait_until(Duration::from_secs(5), || !changes_by(
        &setup,
        "initial load",
        "adult"
    )
    .is_empty()));

    append(&setup.list_path("adult.txt"), "example.org\n");
    assert!(
        wait_until(Duration::from_secs(2), || blocked(
            &server,
            "www.example.org"
        )),
        "not blocked within 2 s:\n{}",
        server.log()
    );
    assert!(wait_until(Duration::from_secs(5), || !changes_by(
        &setup,
        "file edit",
        "adult"
    )
    .is_empty()));
    let edit = &changes_by(&setup, "file edit", "adult")[0];
    assert_eq!(edit["added"], serde_json::json!(["example.org"]));
    assert_eq!(edit["removed"], serde_json::json!([]));
    assert_eq!(
        (edit["size_before"].as_u64(), edit["size_after"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(edit["file"].as_str().unwrap().ends_with("adult.txt"));
}

#[test]
fn an_editor_saving_by_rename_is_picked_up() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);
    let list = setup.list_path("adult.txt");
    let dir = list.parent().unwrap();
    // What vim does with `backupcopy=no`: probe, move the original aside, write anew, clean up.
    fs::write(dir.join("4913"), "").unwrap();
    fs::remove_file(dir.join("4913")).unwrap();
    fs::rename(&list, dir.join("adult.txt~")).unwrap();
    fs::write(&list, "pornhub.com\nxvideos.com\nexample.org\n").unwrap();
    fs::remove_file(dir.join("adult.txt~")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || blocked(
            &server,
            "www.example.org"
        )),
        "{}",
        server.log()
    );
    assert!(blocked(&server, "pornhub.com"));
}

#[test]
fn a_garbage_or_missing_list_keeps_the_previous_lists_in_force() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);
    setup.list(
        "adult.txt",
        "<html>\n<body>503 Service Unavailable</body>\n</html>\n",
    );
    server.expect_log("reload failed");
    server.expect_log("adult.txt:1");
    assert!(
        blocked(&server, "pornhub.com"),
        "the old adult list must stay in force"
    );

    fs::remove_file(setup.list_path("adult.txt")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || count(&server, "reload failed")
            >= 2),
        "{}",
        server.log()
    );
    assert!(blocked(&server, "xvideos.com"));

    setup.list("adult.txt", "pornhub.com\nexample.org\n");
    assert!(
        wait_until(Duration::from_secs(5), || blocked(
            &server,
            "www.example.org"
        )),
        "{}",
        server.log()
    );
    assert!(
        !blocked(&server, "xvideos.com"),
        "the fixed list replaced the old one"
    );
}

/// The server's child processes running `schoolgate ... <command>`, from `/proc`.
fn children_of(pid: u32, command: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // The parent PID is the second field after the command name, which may hold spaces.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let args = fs::read(format!("/proc/{child}/cmdline")).ok()?;
        let runs = args.split(|&b| b == 0).any(|a| a == command.as_bytes());
        (ppid == pid && runs).then_some(child)
    })
    .collect()
}

/// Saves a list large enough that its compile runs for a while (in a child process of the
/// server), sends that child `signal`, and checks that the reload fails saying `said`, that the
/// child is gone and the old list stays in force, and that the next save applies.
fn list_work_ended_by(signal: &str, lists: &str, said: &str) {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().lists(lists);
    let server = setup.start(up.addr);
    let mut big: String = (0..1_000_000)
        .map(|i| format!("n{i}.big-list.example\n"))
        .collect();
    big.push_str("example.org\n");
    setup.list("adult.txt", &big);
    let deadline = Instant::now() + Duration::from_secs(10);
    let compile = loop {
        if let Some(&child) = children_of(server.pid(), "compile").first() {
            break child;
        }
        assert!(
            Instant::now() < deadline,
            "no compile process: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let sent = std::process::Command::new("kill")
        .args([signal, &compile.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(sent, "the compile ended before it got {signal}");
    server.expect_log("reload failed");
    server.expect_log(said);
    assert!(
        wait_until(Duration::from_secs(5), || children_of(
            server.pid(),
            "compile"
        )
        .is_empty()),
        "the compile is gone"
    );
    assert!(
        blocked(&server, "pornhub.com"),
        "the old list stays in force"
    );
    assert!(!blocked(&server, "www.example.org"));

    setup.list("adult.txt", "pornhub.com\nexample.org\n");
    assert!(
        wait_until(Duration::from_secs(10), || blocked(
            &server,
            "www.example.org"
        )),
        "{}",
        server.log()
    );
}

#[test]
fn a_list_compile_that_is_killed_leaves_the_server_filtering() {
    // What the kernel's out-of-memory killer would do to it.
    list_work_ended_by("-KILL", "", "SIGKILL");
}

#[test]
fn list_work_that_hangs_is_stopped_and_the_server_keeps_filtering() {
    // A compile that makes no progress, as one reading a list from a network mount that stopped
    // answering.
    list_work_ended_by(
        "-STOP",
        "work_timeout = \"2s\"",
        "was still running after 2s",
    );
}

/// Replaces the config as an editor saving it would (write beside it, rename over it) and waits
/// for the server to reload it.
/// A technician who saves a list again while the server compiles the first save: the server
/// compiles it again in a child rather than in its own process, where a million names cost it
/// tens of megabytes it would keep. The child here is the real `schoolgate compile`, wrapped so
/// its first run saves `adult.txt` once more as it finishes.
#[test]
fn a_list_saved_again_during_its_compile_is_compiled_again_in_a_child() {
    use std::os::unix::fs::PermissionsExt;

    use schoolgate::domain::QueryName;
    use schoolgate::policy::Action;
    use schoolgate::reload::{self, Adjust, ListWork};

    let setup = Setup::new();
    let config = setup.config();
    let dir = setup.dir.path();
    let runs = dir.join("child-runs");
    let child = dir.join("compile-child");
    let adult = setup.list_path("adult.txt");
    fs::write(
        &child,
        format!(
            "#!/bin/sh\necho run >> '{runs}'\n'{bin}' \"$@\"\nrc=$?\n\
             [ -e '{runs}.saved' ] || {{ touch '{runs}.saved'; echo second-save.example >> '{adult}'; }}\n\
             exit $rc\n",
            runs = runs.display(),
            bin = crate::harness::bin(),
            adult = adult.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&child, fs::Permissions::from_mode(0o755)).unwrap();
    append(&adult, "first-save.example\n");

    let adjust: Adjust = Arc::new(|_| {});
    let loaded = reload::load(&config, &adjust, &ListWork::Child(child)).expect("lists load");
    let children = fs::read_to_string(&runs).unwrap().lines().count();
    assert_eq!(children, 2, "the second save is compiled by a second child");
    let engine = &loaded.engine;
    let who = engine.identify("127.0.0.1".parse().unwrap());
    for name in ["first-save.example", "second-save.example"] {
        let q = QueryName::parse(name).unwrap();
        assert_eq!(
            engine.decide(&who, &q, chrono::Utc::now()).action,
            Action::Block,
            "{name}"
        );
    }
}

fn replace_config(server: &Server, cfg: &Path, text: &str) {
    let reloads = count(server, "reloaded");
    let edited = cfg.with_extension("new");
    fs::write(&edited, text).unwrap();
    fs::rename(&edited, cfg).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || count(server, "reloaded")
            > reloads),
        "{}",
        server.log()
    );
}

#[test]
fn a_changed_upstream_applies_on_reload_and_restart_only_settings_say_so() {
    let old = Fixture::start(Zone::standard());
    let mut zone = Zone::standard();
    zone.a("only-new.example.org", "192.0.2.98");
    let new = Fixture::start(zone);
    let setup = Setup::new().server(&format!("upstreams = [\"{}\"]", old.addr));
    let cfg = setup.config();
    let server = Server::start(&cfg, &[]);
    let ask = |name| addresses(&server.query(name, RecordType::A));
    assert_eq!(ask("www.example.org"), ["192.0.2.11"]);

    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace(&old.addr.to_string(), &new.addr.to_string())
        .replace("[server]\n", "[server]\ncache_size = 777\n");
    replace_config(&server, &cfg, &text);
    assert_eq!(
        ask("only-new.example.org"),
        ["192.0.2.98"],
        "asked the new upstream"
    );
    assert_eq!(old.queries(), 1, "the old upstream is no longer asked");
    server.expect_log(
        "server.cache_size changed in the config: it takes effect when schoolgate restarts",
    );
}

#[test]
fn a_forward_zone_added_on_reload_replaces_what_the_internet_said() {
    let up = Fixture::start(Zone::standard());
    let mut zone = Zone::default();
    zone.a("vle.school.internal", "10.0.0.8");
    let school = Fixture::start(zone);
    let setup = Setup::new().server(&format!("upstreams = [\"{}\"]", up.addr));
    let cfg = setup.config();
    let server = Server::start(&cfg, &[]);
    let ask = || server.query("vle.school.internal", RecordType::A);
    assert_eq!(ask().metadata.response_code, ResponseCode::NXDomain);

    let forward = format!(
        "\n[[forward]]\nzone = \"school.internal\"\nupstreams = [\"{}\"]\n",
        school.addr
    );
    replace_config(
        &server,
        &cfg,
        &(fs::read_to_string(&cfg).unwrap() + &forward),
    );
    assert_eq!(
        addresses(&ask()),
        ["10.0.0.8"],
        "the cached NXDOMAIN is gone: {}",
        server.log()
    );
    assert_eq!(school.queries(), 1);
}

#[test]
fn a_broken_config_keeps_the_server_filtering() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);
    fs::write(
        setup.config_path(),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[lists\n",
    )
    .unwrap();
    server.expect_log("reload failed");
    server.expect_log("schoolgate.toml:3");
    assert!(blocked(&server, "tiktok.com"));
    assert_eq!(
        addresses(&server.query("www.example.org", RecordType::A)),
        ["192.0.2.11"]
    );

    setup.config();
    setup.list("gambling.txt", "bet365.com\nexample.org\n");
    assert!(
        wait_until(Duration::from_secs(5), || blocked(&server, "example.org")),
        "{}",
        server.log()
    );
}

#[test]
fn sighup_reloads_with_watching_turned_off() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().lists("watch = false");
    let server = setup.start(up.addr);
    append(&setup.list_path("adult.txt"), "example.org\n");
    server.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || blocked(&server, "example.org")),
        "{}",
        server.log()
    );
    server.expect_log("trigger=Signal");
}

#[test]
fn no_query_goes_unanswered_while_lists_reload() {
    let up = Fixture::start(Zone::standard());
    // Two clients asking as fast as they can would otherwise meet the per-client rate limit.
    let setup = Setup::new().server("rate_limit_qps = 0");
    let filler: String = (0..50_000)
        .map(|i| format!("filler{i}.example\n"))
        .collect();
    setup.list("gambling.txt", &format!("bet365.com\n{filler}"));
    let server = setup.start(up.addr);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent, lost, wrong) =
                (stop.clone(), sent.clone(), lost.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for (name, want) in [
                        ("www.example.org", "192.0.2.11"),
                        ("pornhub.com", "0.0.0.0"),
                    ] {
                        sent.fetch_add(1, Ordering::SeqCst);
                        match Ask::new(name, RecordType::A)
                            .timeout(Duration::from_secs(2))
                            .send(addr)
                        {
                            None => {
                                lost.fetch_add(1, Ordering::SeqCst);
                            }
                            Some(m) if addresses(&m) != [want] => {
                                wrong.fetch_add(1, Ordering::SeqCst);
                            }
                            Some(_) => {}
                        }
                    }
                }
            })
        })
        .collect();

    for i in 0..4 {
        let before = count(&server, "reloaded");
        setup.list(
            "gambling.txt",
            &format!("bet365.com\nextra{i}.example\n{filler}"),
        );
        if i % 2 == 1 {
            server.signal("HUP");
        }
        assert!(
            wait_until(Duration::from_secs(10), || count(&server, "reloaded")
                > before),
            "{}",
            server.log()
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (sent, lost, wrong) = (
        sent.load(Ordering::SeqCst),
        lost.load(Ordering::SeqCst),
        wrong.load(Ordering::SeqCst),
    );
    assert!(sent > 100, "only {sent} queries sent");
    assert_eq!((lost, wrong), (0, 0), "of {sent} queries during 4 reloads");
    assert!(
        wait_until(Duration::from_secs(5), || blocked(
            &server,
            "extra3.example"
        )),
        "{}",
        server.log()
    );
    assert!(!blocked(&server, "extra0.example"));
}

#[test]
fn technician_edits_are_written_to_the_list_and_recorded_once() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let server = setup.start(up.addr);
    let cfg = setup.config_path();

    let reloads = count(&server, "reloaded");
    let (ok, out, err) = run(
        &cfg,
        &[
            "list",
            "add",
            "adult",
            "Example.ORG",
            "--by",
            "alice",
            "--reason",
            "ticket 7",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("example.org: added to adult"), "{out}");
    assert_eq!(
        fs::read_to_string(setup.list_path("adult.txt")).unwrap(),
        "pornhub.com\nxvideos.com\nexample.org\n"
    );
    assert!(
        wait_until(Duration::from_secs(5), || blocked(
            &server,
            "www.example.org"
        )),
        "{}",
        server.log()
    );
    assert!(wait_until(Duration::from_secs(5), || count(
        &server, "reloaded"
    ) > reloads));

    let alice = changes_by(&setup, "alice", "adult");
    assert_eq!(alice.len(), 1, "{alice:?}");
    assert_eq!(alice[0]["reason"], "ticket 7");
    assert_eq!(alice[0]["added"], serde_json::json!(["example.org"]));
    assert_eq!(
        (
            alice[0]["size_before"].as_u64(),
            alice[0]["size_after"].as_u64()
        ),
        (Some(2), Some(3))
    );

    setup.list("adult.txt", "pornhub.com\nexample.org\n");
    assert!(wait_until(Duration::from_secs(5), || !changes_by(
        &setup,
        "file edit",
        "adult"
    )
    .is_empty()));
    assert_eq!(
        changes_by(&setup, "file edit", "adult")[0]["removed"],
        serde_json::json!(["xvideos.com"])
    );

    let (ok, _, err) = run(
        &cfg,
        &[
            "list",
            "remove",
            "adult",
            "example.org",
            "--by",
            "bob",
            "--reason",
            "false positive",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        fs::read_to_string(setup.list_path("adult.txt")).unwrap(),
        "pornhub.com\n"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !blocked(
            &server,
            "www.example.org"
        )),
        "{}",
        server.log()
    );

    let (ok, _, err) = run(
        &cfg,
        &[
            "allow",
            "tiktok.com",
            "--by",
            "carol",
            "--reason",
            "media studies",
        ],
    );
    assert!(ok, "{err}");
    assert!(wait_until(Duration::from_secs(5), || {
        server
            .query("tiktok.com", RecordType::A)
            .metadata
            .response_code
            == ResponseCode::NXDomain
    }));

    std::thread::sleep(Duration::from_millis(800));
    let all = changes(&setup);
    let mine: Vec<(&str, &str)> = all
        .iter()
        .filter(|c| c["by"] != "initial load")
        .map(|c| (c["by"].as_str().unwrap(), c["category"].as_str().unwrap()))
        .collect();
    assert_eq!(
        mine,
        [
            ("alice", "adult"),
            ("file edit", "adult"),
            ("bob", "adult"),
            ("carol", "allow")
        ]
    );

    let (ok, text, _) = run(&cfg, &["changes", "--since", "2000-01-01"]);
    assert!(ok);
    assert!(
        text.contains("alice  adult  +1 -0  (2 -> 3 entries)"),
        "{text}"
    );
    assert!(
        text.contains("reason: ticket 7") && text.contains("    + example.org"),
        "{text}"
    );
    let (_, future, _) = run(&cfg, &["changes", "--since", "2999-01-01", "--json"]);
    assert_eq!(future, "");
}

#[test]
fn changes_record_logs_an_edit_made_while_no_server_ran() {
    let setup = Setup::new();
    let cfg = setup.config();
    let (ok, first, err) = run(&cfg, &["changes", "--record"]);
    assert!(ok, "{err}");
    assert!(first.contains("initial load  adult"), "{first}");
    let (ok, again, _) = run(&cfg, &["changes", "--record"]);
    assert!(ok);
    assert_eq!(
        again.trim(),
        "no list or setting changed since the last record"
    );

    setup.list("adult.txt", "pornhub.com\nexample.org\n");
    let (ok, json, err) = run(&cfg, &["changes", "--record", "--json"]);
    assert!(ok, "{err}");
    let recorded: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recorded.len(), 1, "{json}");
    assert_eq!(recorded[0]["by"], "file edit");
    assert_eq!(recorded[0]["added"], serde_json::json!(["example.org"]));
    let (_, log, _) = run(&cfg, &["changes", "--json"]);
    assert!(log.contains("\"added\":[\"example.org\"]"), "{log}");
}

#[test]
fn an_edited_change_log_is_found_by_its_links() {
    let setup = Setup::new();
    let cfg = setup.config();
    for name in ["one.example", "two.example"] {
        let (ok, _, err) = run(
            &cfg,
            &[
                "list", "add", "adult", name, "--by", "alice", "--reason", "ticket 7",
            ],
        );
        assert!(ok, "{err}");
    }
    let (ok, verified, err) = run(&cfg, &["changes", "--verify", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&verified).unwrap();
    assert!(v["records"].as_u64().unwrap() >= 2, "{verified}");
    let last = v["last_link"].as_str().unwrap().to_string();
    assert_eq!(last.len(), 64);
    let (ok, summary, err) = setup.run(&["report", "daily", "--date", "today"]);
    assert!(ok, "{err}");
    assert!(
        summary.contains(&format!("links intact; last link {last}")),
        "{summary}"
    );

    // Someone hides what alice did.
    let log = setup.dir.path().join("state/logs/changes.jsonl");
    let text = fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("two.example"))
        .unwrap()
        + 1;
    fs::write(&log, text.replace("two.example", "t0.example")).unwrap();
    let (ok, _, err) = run(&cfg, &["changes", "--verify"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "changes.jsonl:{line}: this record does not follow"
        )),
        "{err}"
    );
    let (_, summary, _) = setup.run(&["report", "daily", "--date", "today"]);
    assert!(
        summary.contains(&format!("links are broken at line {line}")),
        "{summary}"
    );
}

#[test]
fn edit_commands_refuse_bad_input_and_show_lists() {
    let setup = Setup::new();
    let cfg = setup.config();
    let (ok, _, err) = run(
        &cfg,
        &[
            "list",
            "add",
            "adlt",
            "x.example",
            "--by",
            "a",
            "--reason",
            "r",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("no category named \"adlt\"") && err.contains("adult, gambling"),
        "{err}"
    );

    let (ok, _, err) = run(
        &cfg,
        &[
            "list",
            "add",
            "adult",
            "good.example",
            "bad name!",
            "--by",
            "a",
            "--reason",
            "r",
        ],
    );
    assert!(!ok);
    assert!(err.contains("\"bad name!\""), "{err}");
    assert_eq!(
        fs::read_to_string(setup.list_path("adult.txt")).unwrap(),
        "pornhub.com\nxvideos.com\n"
    );

    let (ok, out, _) = run(
        &cfg,
        &[
            "list",
            "remove",
            "adult",
            "absent.example",
            "--by",
            "a",
            "--reason",
            "r",
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("absent.example: not in the local list files"),
        "{out}"
    );

    setup.list("gambling.txt", "<html>\n</html>\n");
    let (ok, _, err) = run(
        &cfg,
        &[
            "list",
            "add",
            "gambling",
            "bet.example",
            "--by",
            "a",
            "--reason",
            "r",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("gambling.txt:1") && err.contains("fix the file first"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(setup.list_path("gambling.txt")).unwrap(),
        "<html>\n</html>\n"
    );

    let (ok, out, _) = run(&cfg, &["list", "show", "adult"]);
    assert!(ok);
    assert!(
        out.contains("xvideos.com\t") && out.contains("adult.txt:2"),
        "{out}"
    );
    let recorded: Vec<Value> = changes(&setup)
        .into_iter()
        .filter(|c| c["by"] != "initial load")
        .collect();
    assert!(
        recorded.is_empty(),
        "refused edits record nothing: {recorded:?}"
    );
}

#[test]
fn edits_made_while_the_server_is_down_are_recorded_at_start_up_once() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new();
    let first = setup.start(up.addr);
    assert!(wait_until(Duration::from_secs(5), || {
        changes_by(&setup, "initial load", "social_media").len() == 1
    }));
    drop(first);
    let cfg = setup.config_path();
    append(&setup.list_path("gambling.txt"), "example.org\n");
    let (ok, _, err) = run(
        &cfg,
        &[
            "list",
            "add",
            "social_media",
            "snapchat.com",
            "--by",
            "dave",
            "--reason",
            "policy",
        ],
    );
    assert!(ok, "{err}");
    let server = setup.start(up.addr);
    assert!(wait_until(Duration::from_secs(5), || !changes_by(
        &setup,
        "file edit",
        "gambling"
    )
    .is_empty()));
    assert_eq!(
        changes_by(&setup, "file edit", "gambling")[0]["added"],
        serde_json::json!(["example.org"])
    );
    assert!(blocked(&server, "snapchat.com"));
    assert!(
        changes_by(&setup, "file edit", "social_media").is_empty(),
        "{:?}",
        changes(&setup)
    );
    assert_eq!(changes_by(&setup, "dave", "social_media").len(), 1);
}

fn remote_setup(url: &str) -> Setup {
    Setup::new().toml(&format!(
        "[[category]]\nname = \"remote_ads\"\nsources = [{{ url = \"{url}\", refresh = \"1s\" }}]\n\n[groups.default]\nblock = [\"illegal\", \"adult\", \"gambling\", \"social_media\", \"circumvention\", \"remote_ads\"]\n"
    ))
}

#[test]
fn a_remote_source_keeps_its_last_good_copy_when_it_goes_away() {
    let up = Fixture::start(Zone::standard());
    let http = ListServer::start("# ads\nremote-ads.example\n0.0.0.0 tracker.example\n");
    let setup = remote_setup(&http.url());
    let server = setup.start(up.addr);
    assert!(
        wait_until(Duration::from_secs(5), || blocked(
            &server,
            "remote-ads.example"
        )),
        "{}",
        server.log()
    );
    assert!(blocked(&server, "tracker.example"));
    let remote = changes_by(&setup, "remote source", "remote_ads");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["url"], http.url().as_str());
    assert_eq!(remote[0]["added_count"], 2);

    http.set(Reply::Status(503));
    let served = http.served();
    assert!(wait_until(Duration::from_secs(5), || http.served() > served));
    server.expect_log("download failed");
    assert!(blocked(&server, "remote-ads.example"));

    drop(http);
    drop(server);
    let offline = setup.start(up.addr);
    assert!(
        blocked(&offline, "remote-ads.example"),
        "the last good copy loads at start-up"
    );
    offline.expect_log("download failed");
    assert!(blocked(&offline, "tracker.example"));
}

#[test]
fn a_remote_source_that_shrinks_or_turns_to_garbage_is_not_applied() {
    let up = Fixture::start(Zone::standard());
    let names = |r: std::ops::Range<usize>| -> String {
        r.map(|i| format!("n{i}.remote.example\n")).collect()
    };
    let http = ListServer::start(&names(0..10));
    let setup = remote_setup(&http.url());
    let server = setup.start(up.addr);
    assert!(
        wait_until(Duration::from_secs(5), || blocked(
            &server,
            "n9.remote.example"
        )),
        "{}",
        server.log()
    );

    http.set(Reply::Body(names(0..2)));
    server.expect_log("not applied");
    server.expect_log("2 entries against 10");
    assert!(blocked(&server, "n9.remote.example"));

    http.set(Reply::Body("<html><body>Moved</body></html>\n".into()));
    server.expect_log("no usable entry");
    assert!(blocked(&server, "n9.remote.example"));

    http.set(Reply::Body(names(1..11)));
    assert!(
        wait_until(Duration::from_secs(5), || blocked(
            &server,
            "n10.remote.example"
        )),
        "{}",
        server.log()
    );
    assert!(!blocked(&server, "n0.remote.example"));
    let refreshes = changes_by(&setup, "remote source", "remote_ads");
    assert_eq!(refreshes.len(), 2, "{refreshes:?}");
    assert_eq!(
        (
            refreshes[1]["added_count"].as_u64(),
            refreshes[1]["removed_count"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[test]
fn a_config_edit_to_what_a_group_blocks_is_in_the_change_log() {
    let up = Fixture::start(Zone::standard());
    let setup = Setup::new().toml(
        "[groups.staff]\nblock = [\"illegal\", \"adult\"]\n[[client]]\nname = \"Staff laptop\"\naddr = \"127.0.0.3\"\ngroup = \"staff\"\n",
    );
    let server = setup.start(up.addr);
    assert!(wait_until(Duration::from_secs(5), || !changes_by(
        &setup,
        "initial load",
        "config"
    )
    .is_empty()));
    let staff_gambling = || {
        let m = Ask::new("bet365.com", RecordType::A)
            .from("127.0.0.3")
            .send(server.addr)
            .unwrap();
        m.metadata.response_code == ResponseCode::NXDomain
    };
    assert!(
        staff_gambling(),
        "staff may reach gambling sites before the edit"
    );
    let path = setup.config_path();
    let text = fs::read_to_string(&path).unwrap().replace(
        "[groups.staff]\nblock = [\"illegal\", \"adult\"]",
        "[groups.staff]\nblock = [\"illegal\", \"adult\", \"gambling\"]",
    );
    fs::write(&path, text).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !staff_gambling()),
        "the edit took effect"
    );
    let edits = changes_by(&setup, "file edit", "config");
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert_eq!(
        edits[0]["added"],
        serde_json::json!(["group staff blocks gambling"])
    );
    assert_eq!(edits[0]["removed"], serde_json::json!([]));
}
