"""Human output of the CLI: the git-like log graph, commits, refs, diffs.

Everything shown comes from strangers (commit messages, params, actors,
reasons, model files), so every human renderer passes its input through
:func:`escaped` first: a terminal must never receive an ANSI escape, another
control character or a right-to-left override from the data. ``--json``
output does not come through here and stays exact.
"""

from __future__ import annotations

import datetime as dt
import functools
import shlex
import unicodedata
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec

from streams.core.graph import layout
from streams.core.model_signature import Tensor

_P = ParamSpec("_P")


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with control, format, bidi and line-separator characters written as escapes.

    Python's "printable" is the test (it excludes categories Cc, Cf, Zl, Zp, Cs,
    Co and Cn, which hold ESC, the C1 controls and U+202A-U+202E/U+2066-U+2069);
    ordinary spaces of category Zs stay as they are. Newlines are escaped too: a
    value must not be able to forge a line of output (e.g. a fake "commit" line).
    """
    if text.isprintable():
        return text  # the common case, checked in C
    return "".join(
        ch if ch.isprintable() or unicodedata.category(ch) == "Zs" else _visible(ch) for ch in text
    )


def escaped(value: Any) -> Any:
    """``value`` (an answer from the service) with every string in it, keys too, escaped."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escaped(k): escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escaped(v) for v in value]
    return value


def terminal(text: str) -> str:
    """Rendered output made safe line by line, keeping its own line breaks."""
    return "\n".join(escape(line) for line in text.split("\n"))


def _for_terminal(
    render: Callable[Concatenate[Any, _P], str],
) -> Callable[Concatenate[Any, _P], str]:
    """Make a renderer see only escaped data (the one way data reaches a renderer)."""

    @functools.wraps(render)
    def wrapper(answer: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> str:
        return render(escaped(answer), *args, **kwargs)

    return wrapper


def short(commit_id: str | None) -> str:
    return commit_id[:10] if commit_id else "-"


def when(ms: object) -> str:
    """A time in ms since the epoch, readable; a time no calendar holds is shown raw.

    Event and prediction times come from the log, which anyone with a Kafka client
    can write: 2**62 must print, not raise.
    """
    try:
        moment = dt.datetime.fromtimestamp(float(ms) / 1000, tz=dt.UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return f"{escape(str(ms))[:40]} ms (not a calendar time)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _label(commit: dict[str, Any], traffic: dict[str, list[str]]) -> str:
    names = [*(commit.get("refs") or []), *traffic.get(commit["id"], [])]
    tag = f" ({', '.join(names)})" if names else ""
    gone = "" if commit.get("reachable", True) else " [unreachable]"
    return f"{short(commit['id'])}{tag}{gone} {commit['message']}"


def traffic(answer: dict[str, Any]) -> dict[str, list[str]]:
    """Commit id -> what it serves besides its refs: the shadow of an alias, or the
    candidate of an active rollout with its share (from a log answer's ``shadows`` and
    ``rollouts``)."""
    out: dict[str, list[str]] = {}
    for s in answer.get("shadows") or []:
        out.setdefault(s["candidate"], []).append(f"shadow of @{s['alias']}")
    for r in answer.get("rollouts") or []:
        if r["status"] in ("running", "paused"):
            out.setdefault(r["candidate"], []).append(
                f"canary {r['percent']}% of @{r['alias']}, {r['status']}"
            )
    return out


def _lane_row(lanes: tuple[bool, ...], marks: dict[int, str]) -> str:
    """One connector row: '|' per live lane; marks put '/' or '\\' in the gap left of a lane."""
    row = ""
    for i, live in enumerate(lanes):
        if i in marks:
            row = row[:-1] + marks[i] + " " if row else marks[i] + " "
        else:
            row += ("|" if live else " ") + " "
    return row.rstrip()


def graph(commits: list[dict[str, Any]], tags: dict[str, list[str]] | None = None) -> list[str]:
    """ASCII DAG, newest first, one lane per line of descent (like `git log --graph`);
    ``tags`` adds labels to commits (see :func:`traffic`). The lanes are
    :func:`streams.core.graph.layout`'s, as the console draws them."""
    shown = iter(commits)  # one commit row per commit, in their order
    lines: list[str] = []
    for row in layout((c["id"], c["parents"]) for c in commits):
        if row.kind != "commit":
            lines.append(_lane_row(row.lanes, dict(row.marks)))
            continue
        cells = ["*" if i == row.column else ("|" if on else " ") for i, on in enumerate(row.lanes)]
        lines.append(" ".join(cells).rstrip() + "  " + _label(next(shown), tags or {}))
    return lines


@_for_terminal
def log(answer: dict[str, Any], with_graph: bool) -> str:
    commits = answer["commits"]
    if not commits:
        return "no commits yet"
    out: list[str] = []
    tags = traffic(answer)
    if with_graph:
        out += graph(commits, tags)
    else:
        for c in commits:
            names = [*c["refs"], *tags.get(c["id"], [])]
            out.append(f"commit {c['id']}" + (f" ({', '.join(names)})" if names else ""))
            if len(c["parents"]) > 1:
                out.append("Merge:  " + " ".join(short(p) for p in c["parents"]))
            out.append(f"Author: {c['author']}")
            out.append(f"Date:   {when(c['at'])}")
            out.append(f"Model:  sha256:{c['artifact_sha256']}")
            out.append(f"\n    {c['message']}\n")
    moves = answer.get("ref_moves") or []
    events = answer.get("traffic_events") or []
    if (moves or events) and answer.get("ref") is None:
        out.append("")
        out.append("ref history (newest first):")
        lines = [(m["seq"], _move_line(m)) for m in moves]
        lines += [(e["seq"], _traffic_line(e)) for e in events]
        out += [line for _, line in sorted(lines, key=lambda row: -row[0])]
    return "\n".join(out)


def _move_line(m: dict[str, Any]) -> str:
    name = ("@" if m["kind"] == "alias" else "") + m["name"]
    why = f"  reason: {m['reason']}" if m["reason"] else ""
    return (
        f"  #{m['seq']:<4} {name:<14} {short(m['old'])} -> {short(m['new'])}  "
        f"{m['cause']} by {m['actor']}{why}"
    )


def _traffic_line(e: dict[str, Any]) -> str:
    """A shadow or rollout event (``queries.traffic_events``) as a ref history line."""
    kind = e["type"]
    rollout = f"rollout {e.get('rollout_id')}"
    if kind == "ShadowStarted":
        what = f"shadow {short(e['candidate'])}"
    elif kind == "ShadowStopped":
        what = f"shadow {short(e['candidate'])} stopped"
    elif kind == "RolloutStarted":
        steps = ",".join(str(s) for s in e.get("steps", []))
        what = f"{rollout} {short(e['baseline'])} -> {short(e['candidate'])} in {steps}%"
    elif kind == "RolloutAdvanced":
        what = f"{rollout} {'completed' if e.get('completed') else 'at'} {e.get('percent')}%"
    elif kind == "RolloutAborted":
        what = f"{rollout} aborted at step {e.get('step')}"
    elif kind == "RolloutPaused":
        what = f"{rollout} paused"
    else:
        what = f"{rollout} resumed"
    why = f"  reason: {e['reason']}" if e.get("reason") else ""
    return (
        f"  #{e['seq']:<4} {'@' + str(e.get('alias', '')):<14} {what}  {kind} by {e['actor']}{why}"
    )


@_for_terminal
def commit(c: dict[str, Any]) -> str:
    lines = [f"commit {c['id']}" + (f" ({', '.join(c['refs'])})" if c.get("refs") else "")]
    if c["parents"]:
        lines.append("parents: " + " ".join(c["parents"]))
    lines += [
        f"author:  {c['author']}",
        f"date:    {when(c['at'])}",
        f"model:   sha256:{c['artifact_sha256']}",
        f"message: {c['message']}",
    ]
    for key, value in sorted(c["params"].items()):
        lines.append(f"param    {key} = {value}")
    for key, value in sorted(c["metrics"].items()):
        lines.append(f"metric   {key} = {value:g}")
    reference = c.get("reference_sha256")
    if reference:
        lines.append(f"reference: sha256:{reference} (training data bins: drift is measured)")
    return "\n".join(lines + signature(c.get("signature")))


# A model may have 100,000 inputs: a terminal shows this many, --json shows every one.
SHOWN_FEATURES = 40


def _folded(lines: list[str], what: str) -> list[str]:
    if len(lines) <= SHOWN_FEATURES:
        return lines
    more = len(lines) - SHOWN_FEATURES
    return [*lines[:SHOWN_FEATURES], f"         ... and {more:,} more {what} (--json lists all)"]


def signature(sig: dict[str, Any] | None) -> list[str]:
    """The lines of a commit's input signature (its plain form), long lists folded."""
    if sig is None:
        return ["signature: none recorded (committed before commits recorded one)"]
    inputs = sig["inputs"]
    head = f"signature: {sig['format']}, {len(inputs):,} input(s), {sig['outputs']} output(s)"
    rows = [f"input    {f['name']} {f['type']}" for f in inputs]
    # An ONNX model's graph as it declares itself: the tensors inputs are fed to, and
    # every output (the first float one is served), each with its type and shape.
    tensors = [
        f"graph    {t['kind']:<6} {t['name']} "
        + Tensor(t["name"], t["kind"], t["type"], tuple(t["shape"])).describe()
        for t in sig.get("graph") or ()
    ]
    return [head, *_folded(rows, "inputs"), *_folded(tensors, "graph tensors")]


def _signature_changes(changes: dict[str, Any] | None) -> list[str]:
    if changes is None:
        return []
    lines = _folded([f"+ feature {f['name']} ({f['type']})" for f in changes["added"]], "added")
    lines += _folded(
        [f"- feature {f['name']} ({f['type']})" for f in changes["removed"]], "removed"
    )
    lines += _folded(
        [f"~ feature {f['name']}: {f['old']} -> {f['new']}" for f in changes["retyped"]],
        "retyped",
    )
    outputs = changes["outputs"]
    if outputs is not None:
        lines.append(f"~ outputs: {outputs['old']} -> {outputs['new']}")
    changed = changes.get("format")
    if changed is not None:
        lines.append(f"~ format: {changed['old']} -> {changed['new']}")
    graph = []
    for t in changes.get("graph") or ():
        mark = "+" if not t["old"] else "-" if not t["new"] else "~"
        shown = {"+": t["new"], "-": t["old"], "~": f"{t['old']} -> {t['new']}"}[mark]
        graph.append(f"{mark} graph {t['kind']} {t['name']}: {shown}")
    return lines + _folded(graph, "graph changes")


@_for_terminal
def refs(r: dict[str, Any]) -> str:
    lines = [f"model {r['model']} (event #{r['seq']})", "branches:"]
    for name, head in r["branches"].items():
        mark = "*" if name == r["default_branch"] else " "
        lines.append(f"  {mark} {name:<16} {short(head)}")
    lines.append("aliases:")
    lines += [f"    @{name:<15} {short(target)}" for name, target in r["aliases"].items()]
    if not r["aliases"]:
        lines.append("    (none)")
    return "\n".join(lines)


@_for_terminal
def diff(d: dict[str, Any]) -> str:
    lines = [
        f"--- {short(d['a']['id'])} {d['a']['message']}",
        f"+++ {short(d['b']['id'])} {d['b']['message']}",
    ]
    if d["artifact_changed"]:
        lines.append(
            f"model: sha256:{short(d['a']['artifact_sha256'])} "
            f"-> sha256:{short(d['b']['artifact_sha256'])}"
        )
    for section in ("params", "metrics"):
        for change in d[section]:
            old, new = change["old"], change["new"]
            if old is None:
                lines.append(f"+ {section[:-1]} {change['key']} = {new}")
            elif new is None:
                lines.append(f"- {section[:-1]} {change['key']} = {old}")
            else:
                delta = f"  ({new - old:+g})" if section == "metrics" else ""
                lines.append(f"~ {section[:-1]} {change['key']}: {old} -> {new}{delta}")
    lines += _signature_changes(d.get("signature"))
    if len(lines) == 2:
        lines.append("(no differences)")
    return "\n".join(lines)


@_for_terminal
def replay(r: dict[str, Any]) -> str:
    lines = [
        f"replayed {r['events']:,} events (models: {r['models']}) from {r['source']} "
        f"in {r['seconds']:.2f}s (last offsets {r['last_offsets']}, peak {r['peak_mb']:.0f} MB)",
        f"harmless duplicates (identical re-emissions): {r['duplicates']}",
        f"skipped (bytes that never were an event, dead-lettered): {len(r.get('skipped', []))}",
        f"integrity violations: {len(r['violations'])}",
    ]
    for v in r["violations"]:
        lines.append(
            f"  {v['kind']:<12} {v['model']}#{v['seq']}  {v['topic']}[{v['partition']}]"
            f"@{v['offset']}  {v['detail']}"
        )
    for p in r["segment_problems"]:
        lines.append(
            f"  segment     {p['file']} (partition {p['partition']}, offsets "
            f"{p['first']}..{p['last']})  {p['detail']}"
        )
    lines.append(f"state digest: {r['digest']}")
    if "live_digest" in r:
        live = r["live_digest"]
        if live is None:
            lines.append(f"live digest:  not compared ({r.get('live_error')})")
        else:
            lines.append(
                f"live digest:  {live}  ({'MATCH' if live == r['digest'] else 'MISMATCH'})"
            )
    return "\n".join(lines)


@_for_terminal
def served(a: dict[str, Any]) -> str:
    p = a["prediction"]
    lines = [
        f"prediction {p['prediction_id']}",
        f"  scored   {when(p['scored_at'])} by {p['worker_id']}: {p['model']}@{p['requested_ref']} "
        f"-> {p['scores']}",
        f"  event    {p['feature_event_id']} at {p['source_topic']}[{p['source_partition']}]"
        f"@{p['source_offset']}",
    ]
    if "commit" in a:
        c = a["commit"]
        lines.append(f"  commit   {c['id']} ({c['message']!r} by {c['author']})")
        lines.append(f"  artifact sha256:{c['artifact_sha256']}")
    r = a.get("rollout")
    if r:
        d = r["decision"]
        lines.append(
            f"  rollout  {r['id']} of @{r['alias']}: the {r['arm']} arm served entity "
            f"{r['entity_key']!r} (bucket {r['bucket']}), the candidate {r['percent']}% since "
            f"{d['event']} #{d['seq']} by {d['actor']} at {when(d['at'])} "
            f"({d['topic']}[{d['partition']}]@{d['offset']})"
        )
    move = a.get("ref_move")
    if move:
        reason = f", reason: {move['reason']}" if move["reason"] else ""
        lines.append(
            f"  because  {move['event']} #{move['seq']} by {move['actor']} at {when(move['at'])} "
            f"moved {move['ref']} {short(move['from'])} -> {short(move['to'])}{reason} "
            f"({move['topic']}[{move['partition']}]@{move['offset']})"
        )
    elif "ref_move" in a and not r:
        lines.append("  because  the request named the commit itself")
    lines += [f"  finding: {f}" for f in a["findings"]]
    return "\n".join(lines)


@_for_terminal
def verification(v: dict[str, Any]) -> str:
    lines = [
        f"re-scored {v['checked']:,} predictions in {v['seconds']:.2f}s: "
        f"{len(v['mismatches'])} differ"
    ]
    for m in v["mismatches"][:50]:
        lines.append(
            f"  {m['prediction_id']} (event {m['feature_event_id']}): recorded {m['recorded']}, "
            f"recomputed {m['recomputed']}: {m['detail']}"
        )
    if v["mismatches"]:
        lines.append(f"largest difference: {v['largest_difference']}")
    other = v.get("other_runtime", [])
    if other:
        lines.append(f"{len(other):,} differ but were made under another runtime:")
        lines += [f"  {r['prediction_id']}: {r['detail']}" for r in other[:50]]
    return "\n".join(lines)


# -- identity and protection ------------------------------------------------------
def _expiry(ms: object) -> str:
    return "never" if not ms else when(ms)


@_for_terminal
def whoami(a: dict[str, Any]) -> str:
    return (
        f"{a['actor']} (role {a['role']}, token {a['token_id']}, "
        f"expires {_expiry(a.get('expires_at'))})"
    )


@_for_terminal
def token_created(a: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"token {a['token_id']} for {a['actor']} (role {a['role']}, "
            f"expires {_expiry(a.get('expires_at'))}); shown only this once:",
            a["token"],
            "use it with:",
            f"  export MODELVC_TOKEN={a['token']}",
            "or keep it in a file only its owner can read (chmod 600 FILE) and set "
            "MODELVC_TOKEN_FILE=FILE",
        ]
    )


@_for_terminal
def tokens(a: dict[str, Any]) -> str:
    rows = a["tokens"]
    if not rows:
        return "no tokens"
    lines = [f"{'TOKEN ID':<16}  {'ACTOR':<20} {'ROLE':<9} {'STATE':<7}  EXPIRES / WHY"]
    for t in rows:
        if t["state"] == "revoked":
            why = f"revoked by {t.get('revoked_by')} at {when(t.get('revoked_at'))}"
            why += f": {t['reason']}" if t.get("reason") else ""
        else:
            why = _expiry(t.get("expires_at"))
        lines.append(f"{t['token_id']:<16}  {t['actor']:<20} {t['role']:<9} {t['state']:<7}  {why}")
        lines.append(f"{'':<16}  issued by {t['issued_by']} at {when(t['issued_at'])}")
    return "\n".join(lines)


def protected_action(kind: str) -> str:
    """What a protection rule guards, in words."""
    if kind == "alias":
        return "moving it"
    return "committing to it, merging into it, rolling it back or creating it"


@_for_terminal
def protections(a: dict[str, Any]) -> str:
    rules = a["rules"]
    if not rules:
        return "no protected refs (protect one with `modelvc protect alias production`)"
    return "\n".join(
        f"{r['kind']:<6} {r['name']:<20} {r['model'] or '(every model)':<20} needs {r['role']}"
        for r in rules
    )


@_for_terminal
def writer_keys(a: dict[str, Any]) -> str:
    """Each key once, with the partitions where it is active or retired."""
    active: dict[str, list[str]] = {}
    retired: dict[str, list[str]] = {}
    for partition, ring in sorted(a["partitions"].items(), key=lambda kv: str(kv[0])):
        for key_id in ring.get("active", {}):
            active.setdefault(key_id, []).append(str(partition))
        for key_id in ring.get("retired", {}):
            retired.setdefault(key_id, []).append(str(partition))
    lines = [f"this instance signs with {a.get('instance_key') or '(no key yet)'}"]
    for key_id in sorted(active.keys() | retired.keys()):
        where = []
        if key_id in active:
            where.append(f"active on partitions {','.join(active[key_id])}")
        if key_id in retired:
            where.append(f"retired on {','.join(retired[key_id])}")
        lines.append(f"  {key_id}  {'; '.join(where)}")
    if len(lines) == 1:
        lines.append("  no partition has a key yet (the first write adds this instance's)")
    return "\n".join(lines)


# -- the artifact store -------------------------------------------------------------
def age(seconds: float) -> str:
    """A duration, coarse: 3d 4h, 5h 12m, 7m, 40s (a clock behind the store's: 0s)."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m" if minutes else f"{secs}s"


def _object_line(o: dict[str, Any]) -> str:
    return f"{o['digest']}  {o['size']:>15,}  {when(o['modified'] * 1000)}  ({age(o['age_s'])} old)"


@_for_terminal
def artifacts(a: dict[str, Any]) -> str:
    lines = [_object_line(o) for o in a["objects"]]
    lines.append(f"{a['count']:,} objects, {a['total_bytes']:,} bytes in {a['store']}")
    return "\n".join(lines)


@_for_terminal
def artifacts_ready(r: dict[str, Any]) -> str:
    if "abort_incomplete_days" in r:
        made = "created the bucket" if r["created"] else "the bucket exists"
        rule = f"; multipart uploads unfinished after {r['abort_incomplete_days']} day are aborted"
    else:
        made, rule = ("created the directory" if r["created"] else "the directory exists"), ""
    return f"{made}{rule}; {r['store']} is ready (reachable and writable)"


@_for_terminal
def artifacts_verified(v: dict[str, Any]) -> str:
    lines = [f"{f['digest']}: {f['problem']}" for f in v["failures"]]
    gone = f" ({v['gone']:,} deleted meanwhile)" if v["gone"] else ""
    lines.append(
        f"checked {v['checked']:,} objects ({v['bytes']:,} bytes) in {v['store']} in "
        f"{v['seconds']:.2f}s{gone}: {len(v['failures'])} damaged"
    )
    if v["failures"]:
        lines.append(
            "upload each one's original model file again (POST /v1/artifacts, or "
            "modelvc.client.Client.upload): the service finds the stored copy damaged and "
            "stores the checked bytes in its place; commits keep naming the same digest"
        )
    return "\n".join(lines)


@_for_terminal
def artifacts_gc(g: dict[str, Any]) -> str:
    verb = "would delete" if g["dry_run"] else "deleted"
    lines = [f"{verb} {_object_line(o)}" for o in g["chosen"]]
    lines += [f"kept {o['digest']}: a record written during this run names it" for o in g["spared"]]
    lines.append(
        f"{verb} {len(g['chosen']):,} of {g['objects']:,} objects ({g['total_bytes']:,} bytes) "
        f"in {g['store']}: none that an event or command mentions, "
        f"none younger than {g['older_than']}"
    )
    if g["dry_run"] and g["chosen"]:
        lines.append(
            f"to delete them: modelvc artifacts gc --older-than {shlex.quote(g['older_than'])} "
            f"--store {shlex.quote(g['store'])}"
        )
    return "\n".join(lines)


# -- shadows and canary rollouts ------------------------------------------------------
_STEP_MARKS = {"running": "▶", "paused": "⏸", "aborted": "✗"}


def steps_line(r: dict[str, Any]) -> str:
    """``10% ✓  50% ▶  100%``: done steps ticked, the current one marked by the status."""
    status, current = r["status"], r["step"]
    cells = []
    for i, percent in enumerate(r["policy"]["steps"]):
        if status == "completed" or i < current:
            mark = " ✓"
        elif i == current:
            mark = " " + _STEP_MARKS.get(status, "?")
        else:
            mark = ""
        cells.append(f"{percent}%{mark}")
    return "  ".join(cells)


def policy_line(policy: dict[str, Any]) -> str:
    parts = [f"min {policy['min_labels']:,} labels a step"]
    parts += [f"{m} worse by at most {limit:g}" for m, limit in policy["max_regression"].items()]
    if policy["max_p99_ms"] is not None:
        parts.append(f"p99 <= {policy['max_p99_ms']:g} ms")
    if policy["max_dead_letter_rate"] is not None:
        parts.append(f"dead-letter rate <= {policy['max_dead_letter_rate']:g}")
    timeout = policy["step_timeout_ms"]
    parts.append(f"step timeout {age(timeout / 1000)}" if timeout else "no step timeout")
    return "; ".join(parts)


def _figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _evidence_lines(evidence: Any) -> list[str]:
    """The figures a decision compared, one line per criterion, as far as they are there:
    evidence comes from the log, so any shape is shown without failing."""
    if not isinstance(evidence, dict):
        return [] if evidence is None else [f"      evidence: {evidence!s:.200}"]
    if evidence.get("manual"):
        why = f": {evidence['reason']}" if evidence.get("reason") else ""
        return [f"      manual, by {evidence.get('by', '?')}{why}"]
    if "unparsed" in evidence:
        return [f"      evidence (not JSON): {evidence['unparsed']!s:.200}"]
    lines = []
    for arm in ("baseline", "candidate"):
        figures = evidence.get(arm)
        if isinstance(figures, dict):
            windows = figures.get("windows")
            count = len(windows) if isinstance(windows, list) else "?"
            lines.append(
                f"      {arm:<9} {_figure(figures.get('predictions'))} predictions, "
                f"{_figure(figures.get('labeled'))} labelled, {count} window(s)"
            )
    criteria = evidence.get("criteria")
    for c in criteria if isinstance(criteria, list) else []:
        if isinstance(c, dict):
            verdict = "ok" if c.get("ok") else "FAILED"
            lines.append(
                f"      {c.get('name')!s:<18} baseline {_figure(c.get('baseline'))}  "
                f"candidate {_figure(c.get('candidate'))}  limit {_figure(c.get('limit'))}  "
                f"{verdict}"
            )
    return lines


def _decision_line(d: dict[str, Any]) -> str:
    kind = d["type"]
    if kind == "RolloutStarted":
        what = f"started at {d['steps'][0] if d.get('steps') else '?'}%"
    elif kind == "RolloutAdvanced":
        what = "completed at 100%" if d.get("completed") else f"advanced to {d.get('percent')}%"
    elif kind == "RolloutAborted":
        what = f"aborted at step {d.get('step')}: {d.get('reason')}"
    elif kind == "RolloutPaused":
        what = f"paused: {d.get('reason')}"
    elif kind == "RolloutResumed":
        what = "resumed"
    else:
        what = kind
    return f"  #{d['seq']:<5} {when(d['at'])}  {what}  by {d['actor']}"


def rollout_status(plain: dict[str, Any], decisions: list[dict[str, Any]]) -> str:
    """A rollout (``queries.rollout``) with each decision (``queries.rollout_decisions``)."""
    return _rollout_status(escaped(plain), escaped(decisions))


def _rollout_status(r: dict[str, Any], decisions: list[dict[str, Any]]) -> str:
    percent = r["percent"]
    lines = [
        f"rollout {r['id']}  @{r['alias']}  {r['status']}"
        + (f" ({r['reason']})" if r["reason"] else ""),
        f"  steps     {steps_line(r)}",
        f"  baseline  {short(r['baseline'])}  serves {100 - percent}% of entities",
        f"  candidate {short(r['candidate'])}  serves {percent}% of entities",
        f"  policy    {policy_line(r['policy'])}",
        f"  started   {when(r['started_at'])}; this step since {when(r['step_started_at'])}",
    ]
    if r.get("allow_signature_change"):
        lines.append("  the final move may change the model's input signature")
    if decisions:
        lines.append("decisions:")
    for d in decisions:
        lines.append(_decision_line(d))
        lines += _evidence_lines(d.get("evidence"))
    return "\n".join(lines)


@_for_terminal
def shadows(a: list[dict[str, Any]]) -> str:
    if not a:
        return "no shadows (start one with `modelvc shadow start production --candidate REF`)"
    return "\n".join(
        f"@{s['alias']:<15} shadow {short(s['candidate'])}  since {when(s['started_at'])}"
        for s in a
    )
