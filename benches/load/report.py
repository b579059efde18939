#!/usr/bin/env python3
"""Turns the raw lines benches/load.sh records into the markdown tables of benches/RESULTS.md.

Each input line is `server key=value ...`. The summary compares schoolgate with the better of
its peers on every measure and says whether the targets of issue 8 are met.
"""

import argparse
import datetime
import statistics

PEERS = ["unbound", "dnsmasq"]
# schoolgate through its sockets, and with the XDP fast path (on loopback here).
OURS = ["schoolgate", "schoolgate-xdp"]
MIXES = ["blocked", "cached", "mixed"]
TOOLS = [("dnsperf", "dnsperf"), ("loadgen", "batching client, saturating"),
         ("many", "batching client, saturating, 256 client ports"),
         ("half", "batching client, half of peak"), ("same", "batching client, same rate for all")]


def parse(path):
    rows = []
    for line in open(path):
        parts = line.split()
        if not parts:
            continue
        row = {"server": parts[0]}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            row[k] = v
        rows.append(row)
    return rows


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--names", type=int, required=True)
    ap.add_argument("--seconds", required=True)
    ap.add_argument("--same-qps", type=int, required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--versions", required=True)
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = parse(a.results)
    servers = [s for s in OURS + PEERS if any(r["server"] == s for r in rows)]
    ours = [s for s in OURS if s in servers]

    def get(server, key, **match):
        for r in rows:
            if r["server"] == server and key in r and all(r.get(k) == v for k, v in match.items()):
                return num(r[key])
        return None

    def each(server, key, **match):
        return [num(r[key]) for r in rows if r["server"] == server and key in r
                and all(r.get(k) == v for k, v in match.items()) and num(r[key]) is not None]

    def median(server, key, **match):
        values = each(server, key, **match)
        return statistics.median(values) if values else None

    out = []
    w = out.append
    w("# Load benchmark results\n")
    w(f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    w(f"- Machine: {a.machine}")
    w(f"- Versions: {a.versions}")
    la = (get("machine", "loadavg_start"), get("machine", "loadavg_end"))
    w(f"- Load average from other work on the machine: {la[0]} at the start, {la[1]} at the end "
      "(measured processes ran at nice -10; background jobs still disturb latency most)")
    w(f"- Listed names: {a.names:,} (the same names for every server); {a.seconds} s per measurement")
    w("- Each server pinned to one CPU, the load (dnsperf or the batching client) and the upstream "
      "(knot, at a real-time priority so its answers do not wait behind the load client) to the "
      "other; all on loopback. The servers run side by side and each mix is "
      "measured on each in turn, so background load falls on all of them alike. `per CPU-s` is "
      "answers divided by the server's own CPU time (utime+stime from /proc) during the run.")
    w("- The batching client and dnsperf send from 4 ports each: a few forwarders, whose "
      "replies of one size schoolgate sends as one segmented message (UDP GSO). The runs from "
      "256 client ports, nearer a building of devices asking directly, leave it little to join.")
    moved = get("machine", "kthreads_moved")
    if moved:
        w(f"- {moved:.0f} kernel threads free to run on any CPU (among them kdamond, the memory "
          "monitor that pages out cold memory here) were moved to the load CPU for the run.")
    if "schoolgate-xdp" in servers:
        attached = get("schoolgate-xdp", "fastpath")
        w("- `schoolgate-xdp` is the same build and config with `xdp = \"lo\"`: UDP queries "
          "taken by the AF_XDP fast path in generic mode "
          + ("(attached for the run)." if attached else "(**it did not attach**: it answered through its sockets)."))
    w("")

    w("## Summary: schoolgate against the better peer\n")
    w("| measure | " + " | ".join(servers) + " | " + " | ".join(f"{s} / best peer" for s in ours)
      + " | target | met (" + ", ".join(ours) + ") |")
    w("|---|" + "---:|" * (len(servers) + len(ours)) + "---|---|")

    def line(label, values, higher_better, target=None, check=None):
        peers = [values[s] for s in servers if s not in OURS and values.get(s) is not None]
        best = (max(peers) if higher_better else min(peers)) if peers else None
        ratios, mets = [], []
        for s in ours:
            sg = values.get(s)
            ratios.append(f"{sg / best:.2f}x" if sg is not None and best else "-")
            mets.append("-" if check is None or sg is None else ("yes" if check(sg, best) else "**no**"))
        w(f"| {label} | " + " | ".join(fmt(values.get(s)) for s in servers)
          + " | " + " | ".join(ratios) + f" | {target or ''} | {' / '.join(mets)} |")

    for mix, factor in [("blocked", 2.0), ("cached", 1.5), ("mixed", None)]:
        vals = {s: get(s, "cpu_qps", mix=mix, tool="loadgen") for s in servers}
        line(f"{mix}: answers per server CPU-second", vals, True,
             f">= {factor}x best peer" if factor else None,
             (lambda sg, best, f=factor: best is not None and sg >= f * best) if factor else None)
    for mix in MIXES:
        vals = {s: get(s, "cpu_qps", mix=mix, tool="many") for s in servers}
        line(f"{mix}: answers per server CPU-second, 256 client ports", vals, True)
    for mix in MIXES:
        vals = {s: get(s, "qps", mix=mix, tool="loadgen") for s in servers}
        line(f"{mix}: qps, batching client", vals, True, ">= best peer",
             lambda sg, best: best is not None and sg >= best)
    for mix in MIXES:
        vals = {s: get(s, "qps", mix=mix, tool="dnsperf") for s in servers}
        line(f"{mix}: qps, dnsperf (client-bound)", vals, True)
    runs = max((len(each(s, "p99_us", mix=m, tool="half")) for s in servers for m in MIXES), default=0)
    for mix in MIXES:
        vals = {s: median(s, "p99_us", mix=mix, tool="half") for s in servers}
        line(f"{mix}: p99 latency at half of peak, us (median of {runs} runs)", vals, False,
             "< 1000 us", lambda sg, best: sg < 1000)
        w(f"| {mix}: p99 at half of peak, each run, us | "
          + " | ".join(" / ".join(fmt(v) for v in each(s, "p99_us", mix=mix, tool="half")) or "-"
                       for s in servers)
          + " |" + " |" * len(ours) + " | |")
    for mix in MIXES:
        vals = {s: get(s, "p99_us", mix=mix, tool="same") for s in servers}
        line(f"{mix}: p99 latency at {a.same_qps:,} qps (every server), us", vals, False)
    vals = {s: get(s, "startup_ms") for s in servers}
    line("start-up to first answer, ms (compiled lists)", vals, False, "< 100 ms",
         lambda sg, best: sg < 100)
    vals = {s: (get(s, "rss_kib") or 0) / 1024 or None for s in servers}
    line("peak RSS, MiB", vals, False, "< 25 MiB", lambda sg, best: sg < 25)
    w("")
    w("| RSS, MiB | " + " | ".join(servers) + " |")
    w("|---|" + "---:|" * len(servers))
    for key, label in [("rss_start_kib", "after start-up (one probe answered)"),
                       ("rss_after_blocked_kib", "after the blocked runs"),
                       ("rss_after_cached_kib", "after the cached runs"),
                       ("rss_after_mixed_kib", "after the mixed runs"),
                       ("hwm_after_blocked_kib", "peak so far (VmHWM), after the blocked runs"),
                       ("hwm_after_cached_kib", "peak so far, after the cached runs"),
                       ("hwm_after_mixed_kib", "peak so far, after the mixed runs"),
                       ("rss_kib", "peak (VmHWM)")]:
        w(f"| {label} | " + " | ".join(fmt((get(s, key) or 0) / 1024 or None) for s in servers) + " |")
    lost = sum(int(v) for s in ours for m in MIXES for t, _ in TOOLS if t != "dnsperf"
               for v in each(s, "lost", mix=m, tool=t))
    w("")
    compile_ms = get("schoolgate", "startup_compile_ms")
    if compile_ms is not None:
        w(f"- schoolgate start-up when the lists must first be compiled: {fmt(compile_ms)} ms.")
    took = get("schoolgate", "took_ms")
    if any("took_ms" in r for r in rows):
        r = next(r for r in rows if "took_ms" in r)
        w(f"- schoolgate reload of all {a.names:,} names under load ({r.get('qps_offered')} qps offered): "
          f"took {r.get('took_ms')} ms; {r.get('answered')} answered, **{r.get('lost')} lost**, "
          f"p99 {r.get('p99_us')} us, max-RSS after the reload {fmt(num(r.get('rss_after_reload_kib', 0)) / 1024)} MiB"
          + (" (target: no query lost)." if took is not None else ".")
          + (f" The touch led to {r.get('reloads')} reloads; the time is the one that compiled."
             if int(r.get("reloads", "1") or 1) > 1 else ""))
    w(f"- Queries lost by schoolgate ({', '.join(ours)}) in the batching-client runs: {lost}.")
    logged = [s for s in ours if get(s, "log_access_dropped") is not None]
    if logged:
        w("- Log writer falling behind (" + ", ".join(logged) + "): access records dropped "
          + " / ".join(f"{get(s, 'log_access_dropped'):,.0f}" for s in logged)
          + "; breach records lost " + " / ".join(f"{get(s, 'log_breach_lost'):,.0f}" for s in logged)
          + "; query path paused for it " + " / ".join(f"{get(s, 'log_pauses'):,.0f}" for s in logged)
          + " times; longest write of log lines (the kernel and the disk) "
          + " / ".join(f"{get(s, 'log_write_longest_ms') or 0:,.1f}" for s in logged) + " ms.")
    placed = [s for s in logged if get(s, "after_mixed_log_access_dropped") is not None]
    if placed:
        w("- The same, so far after each mix (blocked, cached, mixed; " + ", ".join(placed) + "): "
          + "; ".join(s + ": dropped " + " / ".join(f"{get(s, f'after_{m}_log_access_dropped'):,.0f}" for m in MIXES)
                      + ", longest write " + " / ".join(f"{get(s, f'after_{m}_log_write_longest_ms'):,.1f}" for m in MIXES)
                      + " ms" for s in placed) + ".")
    if any(r.get("stalls") == "none" for r in rows):
        w("- Log writer with a stalling disk: not measured here (it needs root, a blkio or io cgroup,"
          " and the logs on a block device).")
    for r in (r for r in rows if r.get("stalls", "none") != "none"):
        w(f"- {r['server']} with a stalling disk (its disk writes throttled to "
          f"{int(r['throttle_bps']) // 1024} KB/s for {r['stall_ms']} ms every {r['stall_every_ms']} ms, "
          f"{r['stalls']} times, under saturating blocked names at {fmt(num(r.get('stall_qps')))} qps): "
          f"access records dropped {r['stall_access_dropped']}, breach records lost {r['stall_breach_lost']}, "
          f"queries lost {r.get('stall_queries_lost', '-')}; longest write of log lines so far "
          f"{r['stall_longest_ms']} ms ({r.get('stall_longest_before_ms', '-')} ms before the stalls); "
          f"peak RSS so far {fmt(num(r['stall_hwm_kib']) / 1024)} MiB.")
    w("")

    w("## All runs\n")
    w("| server | mix | client | qps | per CPU-s | server CPU s | avg us | p99 us | lost | answered | rcodes (noerror/nxdomain/servfail/refused) |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    labels = dict(TOOLS)
    for s in servers:
        for mix in MIXES:
            for tool, _ in TOOLS:
                for r in rows:
                    if r["server"] != s or r.get("mix") != mix or r.get("tool") != tool:
                        continue
                    label = labels[tool] + (f" (run {r['run']})" if "run" in r else "")
                    rc = "/".join(r.get(k, "-") for k in ("noerror", "nxdomain", "servfail", "refused"))
                    w(f"| {s} | {mix} | {label} | {fmt(num(r.get('qps')))} | {fmt(num(r.get('cpu_qps')))} | "
                      f"{r.get('cpu_s', '-')} | {r.get('avg_us', '-')} | {r.get('p99_us', '-')} | {r.get('lost', '-')} | "
                      f"{r.get('answered', '-')} | {rc if tool != 'dnsperf' else '-'} |")
    text = "\n".join(out) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
