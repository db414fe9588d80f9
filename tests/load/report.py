#!/usr/bin/env python3
"""Turns the load test's measurements into docs/perf/storefront.md.

Reads: metrics snapshots (Prometheus text) taken before and after the measured run, the wrk JSON
summaries of the platform and the bare handler, and the machine description. Quantiles of the
server-side histograms are interpolated within buckets, as Prometheus' histogram_quantile does.
"""
import json
import re
import sys
from pathlib import Path

# Label values may hold braces (route templates like /store/{username}): take the labels up to
# the last closing brace before the value.
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+([0-9.eE+-]+|NaN|\+Inf)$')


def parse(text):
    samples = []
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ''))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def total(samples, name, **want):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items()))


def buckets(samples, name, **want):
    out = {}
    for n, l, v in samples:
        if n == name + '_bucket' and all(l.get(k) == w for k, w in want.items()):
            le = float('inf') if l['le'] == '+Inf' else float(l['le'])
            out[le] = out.get(le, 0) + v
    return out


def quantile(q, before, after):
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    les = sorted(delta)
    if not les or delta[les[-1]] <= 0:
        return None
    rank = q * delta[les[-1]]
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        if delta[le] >= rank:
            if le == float('inf'):
                return prev_le
            width = delta[le] - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / width if width else 0)
        prev_le, prev_count = le, delta[le]
    return None


def ms(x):
    return '–' if x is None else f'{x * 1000:.3f} ms'


def main():
    work = Path(sys.argv[1])
    out = Path(sys.argv[2])
    before = parse((work / 'metrics-before.txt').read_text())
    after = parse((work / 'metrics-after.txt').read_text())
    platform = json.loads((work / 'wrk-platform.json').read_text())
    bare = json.loads((work / 'wrk-bare.json').read_text())
    machine = (work / 'machine.txt').read_text().strip()
    params = json.loads((work / 'params.json').read_text())

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    # Reads answered by a cache at either stop (the facade's response cache, or the storefront
    # service's two levels) over all reads: what reached the database is the rest.
    edge_hits = delta('cache_requests_total', cache='facade_storefront', level='l1', result='hit')
    edge_misses = delta('cache_requests_total', cache='facade_storefront', level='l1', result='miss')
    hits = delta('cache_requests_total', cache='storefront', level='l1', result='hit')
    misses = delta('cache_requests_total', cache='storefront', level='l1', result='miss')
    l2_hits = delta('cache_requests_total', cache='storefront', level='l2', result='hit')
    l2_misses = delta('cache_requests_total', cache='storefront', level='l2', result='miss')
    reads = edge_hits + edge_misses if edge_hits + edge_misses else hits + misses
    db_reads = (misses - l2_hits) if l2_hits + l2_misses else misses
    ratio = (reads - db_reads) / reads if reads else None
    hit_b = buckets(before, 'cache_hit_duration_seconds', level='l1')
    hit_a = buckets(after, 'cache_hit_duration_seconds', level='l1')
    route = dict(route='/api/v1/store/{username}', method='GET', status='200')
    http_b = buckets(before, 'http_server_request_duration_seconds', **route)
    http_a = buckets(after, 'http_server_request_duration_seconds', **route)
    rpc = dict(method='thali.storefront.v1.StorefrontService/GetStorefront', code='Ok')
    rpc_b = buckets(before, 'rpc_server_call_duration_seconds', **rpc)
    rpc_a = buckets(after, 'rpc_server_call_duration_seconds', **rpc)
    share = platform['rps'] / bare['rps'] if bare['rps'] else None

    lines = [
        '# Storefront read under load',
        '',
        f"Measured {params['date']} by `just load-test storefront` (tests/load/storefront.sh).",
        '',
        '## Machine',
        '',
        '```',
        machine,
        '```',
        '',
        '## Scenario',
        '',
        f"- `GET /api/v1/store/{{username}}` over {params['creators']} creators ({params['products']} products each), "
        f"popularity Zipf (s = {params['zipf_s']}): creator k is read in proportion to 1/k^s.",
        f"- Tool: wrk {params['wrk']}, {params['threads']} threads, {params['connections']} connections, "
        f"{params['duration']} after a {params['warmup']} warm-up; the load generator shares the 2 cores with the server.",
        f"- Platform: `thali serve` (embedded: SQLite, in-process L1 cache), release build, mode `{params['mode']}`.",
        f"- Bare handler: axum returning a fixed JSON body of the same size ({params['body_bytes']} bytes), same tool and settings.",
        '',
        '## Results',
        '',
        '| | req/s | p50 | p95 | p99 | errors |',
        '|---|---:|---:|---:|---:|---:|',
        f"| platform (full path) | {platform['rps']:.0f} | {platform['p50_ms']:.2f} ms | {platform['p95_ms']:.2f} ms | {platform['p99_ms']:.2f} ms | {platform['errors']} |",
        f"| bare axum handler | {bare['rps']:.0f} | {bare['p50_ms']:.2f} ms | {bare['p95_ms']:.2f} ms | {bare['p99_ms']:.2f} ms | {bare['errors']} |",
        '',
        '| target | measured | met |',
        '|---|---|---|',
        f"| cache hit ratio ≥ 99 % after warm-up | {'–' if ratio is None else f'{ratio * 100:.2f} %'} | {'yes' if ratio is not None and ratio >= 0.99 else 'no'} |",
        f"| server-side cache-hit latency p99 < 1 ms (cache lookup that hits) | {ms(quantile(0.99, hit_b, hit_a))} | {'yes' if (quantile(0.99, hit_b, hit_a) or 1) < 0.001 else 'no'} |",
        f"| full-path throughput ≥ 1/3 of the bare handler | {'–' if share is None else f'{share * 100:.1f} %'} | {'yes' if share is not None and share >= 1 / 3 else 'no'} |",
        f"| zero errors at {params['connections']} connections | {platform['errors']} errors | {'yes' if platform['errors'] == 0 else 'no'} |",
        '',
        'Server-side latency (from `/metrics`, during the measured run):',
        '',
        f"- facade route, p50 / p99: {ms(quantile(0.5, http_b, http_a))} / {ms(quantile(0.99, http_b, http_a))}",
        f"- storefront GetStorefront RPC, p50 / p99: {ms(quantile(0.5, rpc_b, rpc_a))} / {ms(quantile(0.99, rpc_b, rpc_a))}",
        f"- reads: {reads:.0f}; facade response cache {edge_hits:.0f} hits / {edge_misses:.0f} misses; storefront cache "
        f"{hits:.0f} L1 hits, {l2_hits:.0f} L2 hits, {misses:.0f} L1 misses; database reads: {db_reads:.0f}",
        f"- cache lookup that hits, p50 / p99: {ms(quantile(0.5, hit_b, hit_a))} / {ms(quantile(0.99, hit_b, hit_a))} "
        "(the time to answer from the cache, inside the process)",
        '',
        'wrk errors by kind (platform): '
        f"connect {platform['errors_connect']}, read {platform['errors_read']}, write {platform['errors_write']}, "
        f"status {platform['errors_status']}, timeout {platform['errors_timeout']}.",
        '',
    ]
    notes = work / 'notes.md'
    if notes.exists():
        lines += ['## Notes', '', notes.read_text().strip(), '']
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines))
    print(out.read_text())


if __name__ == '__main__':
    main()
