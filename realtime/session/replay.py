"""``b2m session replay``: rerun a recorded session and check it decides the same.

The session record keeps every volume (synced before its ack) and every
decision. A replay feeds the recorded volumes, in the order they arrived,
through a fresh :class:`~realtime.session.engine.SessionEngine` built from the
same bundle, library and options (``session_config.json``), on the recorded session
clock (each run's ``offset_s``), and compares decision by decision: the
action, the clip, the top-k clips and the decoded embedding. The policy's
clock is the scanner's, so a replay at any speed must reproduce the session
exactly; any difference is reported with the first volume where it occurs.

The session config keeps the sha256 of every file of the bundle and the
library it ran with; a replay on parts changed since (a bundle trained again
into the same folder) is refused, naming the files (:func:`changed_parts`),
since its differences would say nothing about the session.

A rerun asks the other question, what another model, library, policy or
block design would have played to the same volumes: :func:`replay_session`
with an engine whose record is a new folder (:func:`copy_received` puts the
received volumes there first), its report read for how the music differed.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from protocols.provenance import provenance
from protocols.session import SessionRecord, write_json_atomic
from protocols.wire import VolumeMessage

from .decisions import run_decisions

__all__ = ["SESSION_JSON", "session_info", "changed_parts", "write_session_info", "read_session_info",
           "read_record_json", "recorded_volumes", "recorded_decisions", "replay_session", "copy_received"]

SESSION_JSON = "session_config.json"  # session.json belongs to the record itself (protocols.session)


def session_info(engine, model: str, library: str, audio: str) -> dict:
    """What a session run by ``engine`` writes as its ``session_config.json``: the parts a replay reopens.

    ``model`` and ``library`` are the folders the engine's decoder and library came from; ``audio``
    is the ``--audio`` it played on.
    """
    decoder = engine.decoder
    return {"model": os.path.abspath(model), "library": os.path.abspath(library),
            "policy": engine.policy_config.to_dict(), "options": engine.options.__dict__, "mode": engine.options.mode,
            "audio": audio, "started_unix": time.time(),
            # the sha256 of each file of both (their manifests' "files"): a replay checks it has the same parts
            "embedder": decoder.embedder, "bundle_sha256": dict(decoder.manifest.get("files", {})),
            "library_sha256": dict(engine.library.manifest.get("files", {})), "provenance": provenance(),
            "yoked_from": engine.yoke.schedule["source"] if engine.yoke is not None else None}


def changed_parts(info: dict, decoder, library, model: str | None = None, library_path: str | None = None
                  ) -> list[str]:
    """What differs between the parts a session ran with (its ``session_config.json``: ``info``) and the
    ``decoder`` and ``library`` opened now (from ``model`` and ``library_path``; default the recorded folders).

    Parts are compared by content (the sha256 of each file), not by folder. Returns one line per part that
    differs, naming its files whose sha256 changed, that were added or that are missing; empty if both are
    the same, or if the session recorded no sha256s (one made before they were kept).
    """
    out = []
    for what, key, then_path, now_path, now in (
            ("model bundle", "bundle_sha256", info.get("model"), model, decoder.manifest),
            ("library", "library_sha256", info.get("library"), library_path, library.manifest)):
        then, current = info.get(key) or {}, now.get("files", {})
        names = sorted(n for n in set(then) | set(current) if then.get(n) != current.get(n)) if then else []
        if names:
            where = then_path if now_path is None or os.path.abspath(now_path) == then_path else \
                f"{os.path.abspath(now_path)} (the session ran with {then_path})"
            state = lambda n: "changed" if n in then and n in current else "added" if n in current else "missing"  # noqa: E731
            out.append(f"the {what} {where} is not the one the session ran with: "
                       + ", ".join(f"{n} {state(n)}" for n in names))
    return out


def write_session_info(session_dir, info: dict) -> str:
    """Write ``session.json`` (bundle, library, options) as ``session_config.json`` atomically."""
    path = os.path.join(os.fspath(session_dir), SESSION_JSON)
    write_json_atomic(path, info)
    return path


def read_record_json(path: str):
    """A JSON file the session wrote atomically (``write_json_atomic``); ValueError if it does not parse."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); it is written atomically, so the folder was "
                             "edited by hand or copied partially") from None


def read_session_info(session_dir) -> dict:
    path = os.path.join(os.fspath(session_dir), SESSION_JSON)
    try:
        return read_record_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: is {session_dir} a folder written by `b2m session`?") from None


def recorded_volumes(session_dir):
    """Yield ``(VolumeMessage, t_recv)`` for every recorded volume, in arrival order (all runs)."""
    rec = SessionRecord(os.fspath(session_dir), sync=False)
    items = []
    for run in rec.runs.values():
        for index, r in run.received.items():
            items.append((float(r.header.get("t_recv", 0.0)), r.offset, run, index))
    items.sort(key=lambda t: (t[0], t[1]))
    for t_recv, _, run, index in items:
        h, g = run.received[index].header, run.geometry
        data = run.volume(index)
        msg = VolumeMessage(run_id=run.run_id, index=index, data=data,
                            affine=np.asarray(h.get("affine", g["affine"]), float).reshape(4, 4),
                            tr_s=float(h.get("tr_s", g["tr_s"])),
                            n_volumes=h.get("n_volumes"), t_acquired=float(h.get("t_acq") or 0.0),
                            t_sent=float(h.get("t_send") or 0.0))
        yield msg, t_recv


def recorded_decisions(session_dir) -> tuple[dict, dict]:
    """Every recorded decision by ``(run_id, index)``, and each run's session-clock offset (seconds)."""
    recorded: dict[tuple[str, int], dict] = {}
    offsets: dict[str, float] = {}
    for _, decisions in run_decisions(session_dir):
        for d in decisions:
            recorded[(d["run_id"], d["index"])] = d
            offsets.setdefault(d["run_id"], float(d["offset_s"]))
    return recorded, offsets


def replay_session(session_dir, engine_factory, progress=None) -> dict:
    """Rerun ``session_dir`` through a new engine and compare with its recorded decisions.

    Parameters
    ----------
    session_dir : path-like
    engine_factory : callable
        ``engine_factory(run_offsets) -> SessionEngine``: without a record dir,
        so the original record is left untouched, or (a rerun) recording into
        a new folder.
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    dict
        ``n_recorded``, ``n_replayed``, ``n_compared``, ``action_mismatches``,
        ``clip_mismatches``, ``topk_mismatches``, ``embedding_max_abs_diff``,
        ``first_mismatch`` (or None), ``first_clip_mismatch`` (``run/index`` of
        the first decision after which other music played, or None),
        ``switches`` (``[recorded, replayed]`` over the decisions compared) and
        ``identical`` (bool).
    """
    recorded, offsets = recorded_decisions(session_dir)
    engine = engine_factory(offsets)
    replayed: dict[tuple[str, int], object] = {}
    vols = list(recorded_volumes(session_dir))
    for k, (msg, t_recv) in enumerate(vols):
        for res in engine.on_volume(msg, t_recv):
            replayed[(res.run_id, res.index)] = res
        if progress is not None:
            progress(k + 1, len(vols))
    engine.finish()
    out = {"n_recorded": len(recorded), "n_replayed": len(replayed), "n_compared": 0, "action_mismatches": 0,
           "clip_mismatches": 0, "topk_mismatches": 0, "embedding_max_abs_diff": 0.0, "first_mismatch": None,
           "first_clip_mismatch": None, "switches": [0, 0],
           "missing_in_replay": sorted(f"{r}/{i}" for r, i in set(recorded) - set(replayed))[:10]}
    for key in sorted(recorded, key=lambda k: (offsets.get(k[0], 0.0), k[1])):
        rec, new = recorded[key], replayed.get(key)
        if new is None:
            continue
        out["n_compared"] += 1
        out["switches"][0] += rec["action"] == "switch"
        out["switches"][1] += new.action == "switch"
        bad = []
        if rec["action"] != new.action:
            out["action_mismatches"] += 1
            bad.append(f"action {rec['action']} -> {new.action}")
        if rec["clip"] != new.clip:
            out["clip_mismatches"] += 1
            bad.append(f"clip {rec['clip']} -> {new.clip}")
            if out["first_clip_mismatch"] is None:
                out["first_clip_mismatch"] = f"{key[0]}/{key[1]}"
        if [t[0] for t in rec["topk"]] != [t[0] for t in new.topk]:
            out["topk_mismatches"] += 1
            bad.append("top-k differs")
        e0, e1 = rec["embedding"], new.embedding
        if (e0 is None) != (e1 is None):
            bad.append("decodability differs")
        elif e0 is not None:
            out["embedding_max_abs_diff"] = max(out["embedding_max_abs_diff"], float(np.max(np.abs(e0 - e1))))
        if bad and out["first_mismatch"] is None:
            out["first_mismatch"] = f"{key[0]}/{key[1]}: " + "; ".join(bad)
    out["identical"] = (out["n_compared"] == out["n_recorded"] and out["first_mismatch"] is None
                        and out["embedding_max_abs_diff"] == 0.0)
    return out


def copy_received(session_dir, out_dir) -> int:
    """Copy the receiver's part of a session record (``session.json``, each run's ``volumes.log`` and
    ``summary.json``) into ``out_dir``, so a rerun there is a record of its own (replayable, exportable).

    Returns the bytes copied. Raises ValueError if ``out_dir`` already holds a session record.
    """
    import shutil

    src, dst = os.path.abspath(os.fspath(session_dir)), os.path.abspath(os.fspath(out_dir))
    if src == dst:
        raise ValueError(f"--out {out_dir} is the recorded session itself; give a new folder for the rerun")
    if os.path.exists(os.path.join(dst, "session.json")):
        raise ValueError(f"{out_dir} already holds a session record; give a new folder for the rerun")
    copied = 0
    for rel in ["session.json"] + sorted(os.path.join("runs", r, name) for r in os.listdir(os.path.join(src, "runs"))
                                         for name in ("volumes.log", "summary.json")):
        if os.path.exists(os.path.join(src, rel)):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(src, rel), os.path.join(dst, rel))
            copied += os.path.getsize(os.path.join(dst, rel))
    return copied

