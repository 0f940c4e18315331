#!/usr/bin/env python3
"""Turn bench/run.sh's raw measurements (key<TAB>value lines) into the summary table
(stdout) and JSON (the second argument). Targets are reported, never enforced: the exit
status is 0 whatever the numbers say."""

import argparse
import json
import statistics
import sys
from collections import defaultdict

MB = 1e6
MIB = 1024 * 1024


def load(path):
    samples = defaultdict(list)
    errors = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or "\t" not in line:
                continue
            key, value = line.split("\t", 1)
            if key == "error":
                errors.append(value)
                continue
            try:
                samples[key].append(float(value))
            except ValueError:
                pass
    return samples, errors


class Data:
    def __init__(self, samples):
        self.samples = samples

    def med(self, key):
        v = self.samples.get(key)
        return statistics.median(v) if v else None

    def total(self, key):
        v = self.samples.get(key)
        return sum(v) if v else None

    def n(self, key):
        return len(self.samples.get(key, []))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}" if abs(v) >= 10000 else f"{v:.0f}" if float(v).is_integer() else f"{v:.{digits}f}"
    return f"{v:.{max(digits, 2)}f}" if abs(v) < 10 else f"{v:.{digits}f}"


def build(d, errors):
    blob = d.med("meta.blob_bytes")
    conc_blob = d.med("meta.conc_blob_bytes")
    rows = []

    def row(step, name, berth, ref_name=None, ref=None, r=None, target=None, check=None, unit="", note="",
            subject="berth", check_value=False):
        met = None
        if check is not None:
            value = berth if check_value or r is None else r
            met = None if value is None else bool(check(value))
        rows.append({
            "step": step, "measurement": name.strip(), "sub": name.startswith(" "), "unit": unit,
            "subject": subject, "value": berth, "reference_name": ref_name, "reference": ref,
            "ratio": r, "target": target, "met": met, "note": note,
        })

    # 1. cached blob throughput (MB/s = 10^6 bytes/s)
    b, n, p = (d.med(f"cached.{s}.bps") for s in ("berth", "nginx", "proxy"))
    runs = d.n("cached.berth.bps")
    row(1, f"cached blob GET throughput, MB/s (median of {runs})", b and b / MB, "nginx sendfile", n and n / MB,
        ratio(b, n), ">= 1.0x nginx", lambda x: x >= 1.0, "MB/s")
    row(1, "  cached blob GET throughput, MB/s", p and p / MB, "nginx sendfile", n and n / MB, ratio(p, n),
        "(context)", unit="MB/s", subject="distribution proxy")

    # 6. CPU seconds per GB served during the cached runs
    def per_gb(s):
        sec, byt = d.total(f"cpu.{s}.seconds"), d.total(f"cpu.{s}.bytes")
        return None if not byt else sec / (byt / 1e9)
    cb, cn, cp = per_gb("berth"), per_gb("nginx"), per_gb("proxy")
    row(6, "server CPU s per GB served (utime+stime)", cb, "nginx (master+worker)", cn, ratio(cb, cn),
        "<= 1.2x nginx", lambda x: x <= 1.2, "s/GB")
    row(6, "  server CPU s per GB served", cp, "nginx (master+worker)", cn, ratio(cp, cn), "(context)",
        unit="s/GB", subject="distribution proxy")

    # 2. cold pull
    cb_, cd, cpx = (d.med(f"cold.{s}.bps") for s in ("berth", "direct", "proxy"))
    runs = d.n("cold.berth.bps")
    row(2, f"cold pull MB/s, fresh store (median of {runs})", cb_ and cb_ / MB, "direct upstream GET",
        cd and cd / MB, ratio(cb_, cd), ">= 0.7x direct", lambda x: x >= 0.7, "MB/s")
    row(2, "  cold pull MB/s, fresh storage", cpx and cpx / MB, "direct upstream GET", cd and cd / MB,
        ratio(cpx, cd), "(context)", unit="MB/s", subject="distribution proxy")
    def cold_cpu(s):
        sec = d.med(f"cold.{s}.cpu_s")
        return None if sec is None or not blob else sec / (blob / 1e9)
    kb, kp = cold_cpu("berth"), cold_cpu("proxy")
    tt = {s: d.med(f"cold.{s}.ttfb_s") for s in ("berth", "direct", "proxy")}
    row(2, "cold pull: server CPU s per GB", kb, "distribution proxy", kp, ratio(kb, kp), "<= 1.4 s/GB (berth)",
        (lambda x: x <= 1.4) if kb is not None else None, unit="s/GB", check_value=True, note="time to first byte: " + ", ".join(
            f"{s} {v * 1000:.1f} ms" for s, v in tt.items() if v is not None))
    mb = d.med("cold.berth.upstream_metric_bytes")
    row(2, "upstream MiB per cold pull (berth metric)", mb and mb / MIB, "blob size", blob and blob / MIB,
        ratio(mb, blob), "1.0x blob", lambda x: abs(x - 1.0) < 0.001, "MiB")
    lb, lp = d.med("cold.berth.upstream_log_bytes"), d.med("cold.proxy.upstream_log_bytes")
    row(2, "upstream MiB per cold pull (upstream access log)", lb and lb / MIB, "distribution proxy",
        lp and lp / MIB, None, "(context)", unit="MiB",
        note=f"proxy = {ratio(lp, blob):.2f}x blob" if lp is not None and blob else "")
    gb, gp = d.med("cold.berth.upstream_gets"), d.med("cold.proxy.upstream_gets")
    row(2, "upstream blob GETs per cold pull (access log)", gb, "distribution proxy", gp, None, "1 (berth)",
        (lambda x: x == 1) if gb is not None else None, "requests")

    # 3. N concurrent cold pulls
    ns = sorted({int(k.split(".")[2]) for k in d.samples if k.startswith("conc.")})
    for nn in ns:
        wb, wp = d.med(f"conc.berth.{nn}.wall_s"), d.med(f"conc.proxy.{nn}.wall_s")
        okb, okp = d.med(f"conc.berth.{nn}.ok"), d.med(f"conc.proxy.{nn}.ok")
        note = f"complete: berth {fmt(okb)}/{nn}, proxy {fmt(okp)}/{nn}"
        row(3, f"{nn} concurrent cold pulls ({conc_blob / MIB:.0f} MiB): wall s" if conc_blob else
            f"{nn} concurrent cold pulls: wall s", wb, "distribution proxy", wp, ratio(wb, wp),
            "(context; lower is better)", unit="s", note=note)
        ub, up = d.med(f"conc.berth.{nn}.upstream_gets"), d.med(f"conc.proxy.{nn}.upstream_gets")
        mbb = d.med(f"conc.berth.{nn}.upstream_metric_bytes")
        note = f"berth metric: {ratio(mbb, conc_blob):.2f}x blob" if mbb is not None and conc_blob else ""
        target = "1 (berth)" if nn == max(ns) else "(context)"
        row(3, f"  {nn} concurrent: upstream blob GETs", ub, "distribution proxy", up, None, target,
            unit="requests", note=note)
        if nn == max(ns):
            rows[-1]["met"] = None if ub is None else (ub == 1 and (mbb is None or abs(mbb - conc_blob) < 1))

    # 4. manifest by tag under wrk
    rb, rp, ru = (d.med(f"manifest.{s}.rps") for s in ("berth", "proxy", "upstream"))
    row(4, "manifest GET by tag, req/s (wrk -t2 -c32)", rb, "distribution proxy", rp, ratio(rb, rp),
        ">= 10x proxy", lambda x: x >= 10, "req/s",
        note=f"upstream registry {fmt(ru)} req/s" if ru is not None else "")
    pb, pp, pu = (d.med(f"manifest.{s}.p99_ms") for s in ("berth", "proxy", "upstream"))
    row(4, "  manifest GET by tag, p99 ms", pb, "distribution proxy", pp, ratio(pb, pp), "(context)",
        unit="ms", note=f"upstream registry {fmt(pu)} ms" if pu is not None else "")
    errs = []
    for s in ("berth", "proxy", "upstream"):
        bad = (d.total(f"manifest.{s}.non2xx") or 0) + (d.total(f"manifest.{s}.socket_errors") or 0)
        if bad:
            errs.append(f"{s}: {bad:.0f} non-2xx/socket errors")
    if errs:
        rows[-1]["note"] = (rows[-1]["note"] + "; " if rows[-1]["note"] else "") + ", ".join(errs)
    mu = d.med("manifest.berth.upstream_requests")
    if mu is not None:
        row(4, "  upstream manifest requests during wrk", mu, None, None, None, "(context)",
            unit="requests")

    # 5. peak RSS
    hwm = d.med("rss.berth.hwm_kib")
    idle = d.med("rss.berth.idle_kib")
    ok = d.med("rss.clients_ok")
    clients = d.med("rss.clients")
    row(5, f"berth peak RSS MiB (VmHWM), {clients:.0f} readers of cached blob" if clients else "berth peak RSS MiB (VmHWM)", hwm and hwm / 1024, None, None, None,
        "< 64 MiB", lambda x: x < 64, "MiB",
        note=(f"idle {idle / 1024:.1f} MiB; " if idle else "") + (f"{ok:.0f}/{clients:.0f} readers complete; " if ok is not None and clients else "")
        + (f"upstream GETs {d.med('rss.upstream_gets'):.0f}" if d.med("rss.upstream_gets") is not None else ""))

    # 8. a cached 4 KiB blob under wrk -t2 -c32
    sb, sn = d.med("small.berth.rps"), d.med("small.nginx.rps")
    if sb is not None or sn is not None:
        rounds = d.n("small.berth.rps")
        row(8, f"cached 4 KiB blob, req/s (wrk -t2 -c32, median of {rounds})", sb, "nginx sendfile, 1 worker", sn,
            ratio(sb, sn), ">= 1.0x nginx", lambda x: x >= 1.0, "req/s")
        qb, qn = d.med("small.berth.p99_ms"), d.med("small.nginx.p99_ms")
        row(8, "  cached 4 KiB blob, p99 ms", qb, "nginx sendfile, 1 worker", qn, ratio(qb, qn), "<= 2x nginx",
            lambda x: x <= 2.0, "ms", note=f"p50: berth {fmt(d.med('small.berth.p50_ms'))} ms, nginx "
            f"{fmt(d.med('small.nginx.p50_ms'))} ms")
        bad = {s: (d.total(f"small.{s}.non2xx") or 0) + (d.total(f"small.{s}.socket_errors") or 0)
               for s in ("berth", "nginx")}
        if any(bad.values()):
            rows[-1]["note"] += "; non-2xx/socket errors: " + ", ".join(f"{s} {v:.0f}" for s, v in bad.items())

    # 9. LOAD_CONNS connections pulling a cached image
    conns = d.med("load.conns")
    lb, lp = d.med("load.berth.bps"), d.med("load.proxy.bps")
    if lb is not None or lp is not None:
        row(9, f"{conns:.0f} connections pulling a cached image, MB/s", lb and lb / MB, "distribution proxy",
            lp and lp / MB, ratio(lb, lp), ">= 8.9x proxy", lambda x: x >= 8.9, "MB/s",
            note=f"req/s: berth {fmt(d.med('load.berth.rps'))}, proxy {fmt(d.med('load.proxy.rps'))}; p99: berth "
            f"{fmt(d.med('load.berth.p99_ms'))} ms, proxy {fmt(d.med('load.proxy.p99_ms'))} ms")
        bad = {s: (d.total(f"load.{s}.non2xx") or 0) + (d.total(f"load.{s}.socket_errors") or 0)
               for s in ("berth", "proxy")}
        if any(bad.values()):
            rows[-1]["note"] += "; non-2xx/socket errors: " + ", ".join(f"{s} {v:.0f}" for s, v in bad.items())
        def peak(s):
            v = d.samples.get(f"load.{s}.rss_kib")
            return max(v) / 1024 if v else None
        row(9, "  peak RSS MiB during that load (sampled every second)", peak("berth"), "distribution proxy",
            peak("proxy"), None, "<= 128 MiB", lambda x: x <= 128, "MiB",
            note=f"idle before: {fmt((d.med('load.berth.idle_kib') or 0) / 1024)} MiB; VmHWM "
            f"{fmt((d.med('load.berth.hwm_kib') or 0) / 1024)} MiB")
        after = d.med("load.berth.after_rss_kib.10")
        row(9, "  RSS MiB 10 s after that load", after and after / 1024, "distribution proxy",
            (d.med("load.proxy.after_rss_kib.10") or 0) / 1024 or None, None, "<= 32 MiB", lambda x: x <= 32, "MiB",
            note="1 s after: " + fmt((d.med("load.berth.after_rss_kib.1") or 0) / 1024) + " MiB")

    # 7. cluster: 3 replicas sharing one S3 bucket
    clients = d.med("cluster.clients")
    g3, g1 = d.med("cluster.three.upstream_gets"), d.med("cluster.one.upstream_gets")
    if g3 is not None:
        row(7, f"cluster: upstream blob GETs, {clients:.0f} cold clients over 3 replicas", g3, "1 replica, same clients",
            g1, None, "1", lambda x: x == 1, "GETs",
            note=f"clients complete: {d.med('cluster.three.ok'):.0f}/{clients:.0f}")
        w3, w1 = d.med("cluster.three.wall_s"), d.med("cluster.one.wall_s")
        row(7, "  cluster: cold wall s, 3 replicas", w3, "1 replica, same clients", w1, ratio(w3, w1),
            "(context; lower is better)", unit="s")
    sh, lh, ph = (d.med(f"cluster.{k}.bps") for k in ("shared_hit", "local_hit", "proxy_s3_hit"))
    if sh is not None:
        row(7, "shared-tier hit MB/s (empty local disk)", sh / MB, "local hit, same replica", lh and lh / MB,
            ratio(sh, lh), "(context)", unit="MB/s")
        row(7, "  shared-tier hit MB/s", sh / MB, "distribution proxy on S3", ph and ph / MB, ratio(sh, ph),
            ">= 1.0x proxy", (lambda x: x >= 1.0) if ph else None, "MB/s")
    return rows


def table(rows):
    headers = ["#", "measurement", "subject", "value", "reference", "ref value", "ratio", "target", "status"]
    out = []
    for r in rows:
        status = "" if r["met"] is None and r["target"] and r["target"].startswith("(") else \
            ("n/a" if r["met"] is None else "met" if r["met"] else "MISSED")
        out.append([
            str(r["step"]), ("  " if r["sub"] else "") + r["measurement"], r["subject"],
            fmt(r["value"]), r["reference_name"] or "", fmt(r["reference"]) if r["reference_name"] else "",
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"] or "", status,
        ])
    widths = [max(len(h), *(len(o[i]) for o in out)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for o, r in zip(out, rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(o, widths)).rstrip())
        if r["note"]:
            lines.append(" " * (widths[0] + 2) + "    " + r["note"])
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("json_out")
    ap.add_argument("--meta", action="append", default=[])
    ap.add_argument("--berth-log")
    a = ap.parse_args()

    samples, errors = load(a.raw)
    meta = dict(m.split("=", 1) for m in a.meta if "=" in m)
    d = Data(samples)
    rows = build(d, errors)

    berth_log = []
    if a.berth_log:
        try:
            with open(a.berth_log, encoding="utf-8", errors="replace") as f:
                berth_log = f.read().splitlines()
        except OSError:
            pass

    blob = d.med("meta.blob_bytes")
    print()
    print("=" * 100)
    print(f"berth benchmark  {meta.get('date', '')}  {meta.get('berth_version', '')} ({meta.get('berth_commit', '')})"
          f"  cpus={meta.get('cpus', '?')}  blob={blob / MIB if blob else 0:.0f} MiB  elapsed={meta.get('elapsed_s', '?')} s")
    print(f"references: distribution {meta.get('distribution', '?')} (upstream + proxy mode), "
          f"nginx {meta.get('nginx', '?')} sendfile; MB = 10^6 bytes; targets are reported, not enforced")
    print("clients and servers share the same cores: compare ratios within this run, not across runs")
    print("=" * 100)
    print(table(rows))
    if errors:
        print()
        print("FAILURES:")
        for e in errors:
            print(f"  - {e}")
    if berth_log:
        print()
        print(f"berth logged {len(berth_log)} line(s) at warn or above; last ones:")
        for line in berth_log[-5:]:
            print("  " + line[:300])
    missed = [r["measurement"] for r in rows if r["met"] is False]
    print()
    unmeasured = sum(1 for r in rows if r["met"] is None and r["target"] and not r["target"].startswith("("))
    print(f"targets met: {sum(1 for r in rows if r['met'] is True)}, missed: {len(missed)}"
          + (f" ({'; '.join(missed)})" if missed else "") + (f", not measured: {unmeasured}" if unmeasured else ""))

    result = {
        "meta": meta,
        "rows": rows,
        "medians": {k: statistics.median(v) for k, v in sorted(samples.items())},
        "samples": {k: v for k, v in sorted(samples.items())},
        "errors": errors,
        "berth_log_tail": berth_log[-20:],
    }
    with open(a.json_out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"JSON: {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
