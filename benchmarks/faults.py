"""Run every fault, race and outage test against its real servers and processes, and write what each
fault did and what it lost: ``benchmarks/results/faults.md``.

    .venv/bin/python benchmarks/faults.py

The tests are the evidence (they start ``mlflow server`` with a SQL store, moto S3, and kill real
processes, each on 127.0.0.1); this script runs them with pytest, reads its JUnit XML and writes one
row per fault with the test's outcome and time, so the table says only what this run showed. The load
figures come from ``benchmarks/serving_load.py``'s committed results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import provenance

ROOT = Path(__file__).resolve().parents[1]

# (test id, the fault, what the step does, what is lost)
FAULTS = [
    ("tests/test_gate_lock.py::test_two_registrations_at_once_never_leave_the_weaker_champion",
     "Two `register` processes decide against the same champion at once, 20 rounds",
     "the registry lock (`<model>.gate-lock`) makes the decisions one after the other; the second re-reads the "
     "champion and decides against the winner; both decisions are tagged on their versions",
     "nothing; the champion is the better model in every round"),
    ("tests/test_gate_lock.py::test_without_the_lock_the_same_race_crowns_a_weaker_model",
     "The same race without the lock (the code before it)",
     "both contenders read the same champion and both promote in at least half the rounds; the last writer wins",
     "the decision of one contender, in those rounds: what the lock prevents (the test asserts the race is real)"),
    ("tests/test_gate_lock.py::test_a_holder_killed_mid_decision_blocks_the_next_registration_only_until_its_lock_"
     "expires",
     "A `register` killed while it holds the lock",
     "its heartbeat stops; the next registration waits until the lock expires, breaks it and decides",
     "nothing; no alias moved by the dead holder"),
    ("tests/test_tracking_server.py::test_two_register_steps_at_once_decide_one_after_the_other",
     "Two `register` steps of real pipelines finish together",
     "one decides, then the other against the new champion", "nothing"),
    ("tests/test_tracking_server.py::test_server_down_fails_fast_and_moves_no_alias",
     "MLflow down for the whole `register`",
     "3 retries with backoff, then exit 2 in one line, credentials masked", "nothing; no alias moved"),
    ("tests/test_tracking_server.py::test_server_back_during_the_retries_registers_once",
     "MLflow unreachable when `register` starts, back 1.5 s later",
     "the retries reach it; one version, the champion alias on it", "nothing"),
    ("tests/test_tracking_server.py::test_a_connection_cut_while_the_model_uploads_moves_no_alias",
     "The connection to MLflow (which proxies the S3 artifact store) cut after 1 MB of the 5 MB model",
     "exit 2 in one line; the run is failed; a rerun registers and promotes",
     "nothing; no version half-uploaded holds the champion alias"),
    ("tests/test_tracking_server.py::test_registration_failing_half_way_moves_no_alias",
     "The connection drops after the version is created, before the alias",
     "exit 2; the run is marked FAILED", "nothing; the alias stays on the old champion"),
    ("tests/test_faults.py::test_an_upload_cut_part_way_leaves_no_dataset_a_step_accepts_and_a_rerun_recovers",
     "S3 drops every connection half-way through `ingest`'s shard upload",
     "exit 2 in one line; the manifest (the dataset's record) goes up last, so none is there; `profile` refuses "
     "the prefix; the same `ingest` again completes",
     "nothing; no step reads the partial upload"),
    ("tests/test_faults.py::test_a_shard_that_is_not_the_one_the_manifest_lists_is_refused",
     "A shard truncated or missing after the manifest was written",
     "readers check each shard's sha256 against the manifest and exit 2 naming it", "nothing read as complete"),
    ("tests/test_faults.py::test_ingest_killed_mid_write_leaves_the_last_complete_dataset_and_a_rerun_recovers",
     "`ingest` SIGKILLed with one shard whole and the next half-written",
     "the shards were in a staging folder beside the dataset; the previous dataset stays whole and readable; the "
     "same `ingest` again writes the new one",
     "nothing; the killed run's staging folder is left behind, where no step reads"),
    ("tests/test_faults.py::test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights",
     "`finetune` SIGKILLed mid-epoch",
     "`--resume` restarts from the last epoch checkpoint (written atomically) and redoes the lost batches",
     "the batches since that checkpoint, redone; the final weights are bit-identical to an uninterrupted run"),
]


def run_tests(ids: list[str]) -> dict[str, dict]:
    """Outcome and seconds of each test id, from pytest's JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *ids],
                       cwd=ROOT, check=False)
        outcomes = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            file = case.get("classname").replace(".", "/") + ".py"
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            outcomes[f"{file}::{case.get('name')}"] = {
                "outcome": "failed" if failed else "skipped" if skipped else "passed",
                "seconds": float(case.get("time", 0))}
    return outcomes


def main() -> None:
    started = datetime.now(timezone.utc)
    outcomes = run_tests([test for test, *_ in FAULTS])
    load = json.loads((ROOT / "benchmarks" / "results" / "serving-load.json").read_text())
    machine = provenance.machine()
    lines = ["# Faults, races and outages: what happened and what was lost", "",
             "Generated by `benchmarks/faults.py`; do not edit by hand.", "",
             f"- Command: `{provenance.command('benchmarks/faults.py', sys.argv[1:])}`",
             f"- Run {started.strftime('%Y-%m-%d %H:%M UTC')} on {machine['cpu']}, {machine['cores']} cores; every "
             "server on 127.0.0.1 (`mlflow server` with a SQLite store and moto S3 as its artifact store)", "",
             "| fault | what the step did | what was lost | test | outcome | s |", "|---|---|---|---|---|---:|"]
    for test, fault, did, lost in FAULTS:
        got = outcomes.get(test, {"outcome": "not run", "seconds": 0.0})
        lines.append(f"| {fault} | {did} | {lost} | `{test.split('::')[1]}` | {got['outcome']} "
                     f"| {got['seconds']:.0f} |")
    r = load["load"]
    lines += ["", "## Serving under load", "",
              f"From `benchmarks/serving_load.py` (serving-load.md): `mlflow models serve`, {r['clients']} clients "
              f"for {r['seconds']:.0f} s, {r['requests']:,} requests ({r['throughput_per_s']:.1f}/s), p50 "
              f"{r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, {r['errors']} errors, "
              f"{r['answers_differing_from_a_lone_request']} answers unlike a lone request's; "
              + ", ".join(f"{name}: {b['status']}" + (", the next request answered" if b["next_ok"] else "")
                          for name, b in load["bad"].items()) + ".", ""]
    out = ROOT / "benchmarks" / "results" / "faults.md"
    out.write_text("\n".join(lines))
    failed = [t for t, *_ in FAULTS if outcomes.get(t, {}).get("outcome") != "passed"]
    print(f"wrote {out}; {len(FAULTS) - len(failed)} of {len(FAULTS)} faults held" + (f"; not: {failed}" if failed
                                                                                        else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
