"""The phenomena suite's machinery: claims cover every lesson, the reproduce rule, cheap claims run,
and a claim's runs go through an engine (submitted, waited for, read back; reused by config hash)."""
from __future__ import annotations

import math

from kdengine.experiments.phenomena import (CLAIMS, Claim, ClaimResult, claims_by_id, markdown_table,
                                            run_claims)
from kdengine.teaching.lessons import load_lessons


def test_every_lesson_has_a_claim_and_every_claim_names_a_real_lesson():
    lessons = {lesson.id for lesson in load_lessons()}
    claimed = {c.lesson for c in CLAIMS if c.lesson}
    assert claimed <= lessons
    assert lessons <= claimed, f"lessons without a measured claim: {lessons - claimed}"
    assert len(claims_by_id()) == len(CLAIMS)           # ids are unique


def test_reproduced_needs_the_mean_one_sd_past_the_threshold():
    c = Claim("x", "", "x", lambda s: {}, "e", "pts", 0.0, "paper")
    assert c.holds(2.0, 1.0) and not c.holds(1.0, 1.5) and not c.holds(math.nan, 0.0)
    below = Claim("y", "", "y", lambda s: {}, "e", "err", 1e-6, "paper", below=True)
    assert below.holds(1e-9, 0.0) and not below.holds(1e-3, 0.0)
    r = ClaimResult(c, [1.0, 3.0], [{}, {}], 0.0, 0.0)
    assert r.mean == 2.0 and math.isclose(r.sd, math.sqrt(2)) and r.reproduced


def test_two_cheap_claims_run_and_reproduce_with_one_seed():
    wanted = [claims_by_id()["dkd_identity"], claims_by_id()["ranking_kept"]]
    seen = []
    results = run_claims(wanted, [0], lambda cid, seed: seen.append((cid, seed)))
    assert seen == [("dkd_identity", 0), ("ranking_kept", 0)]
    ident, ranking = results
    assert ident.values[0] < 1e-9 and ident.reproduced
    assert ranking.values[0] == 1.0 and ranking.reproduced
    # the softening measurement behind it: entropy rises with T
    d = ranking.details[0]
    assert d["entropy_T4"] > d["entropy_T1"] > 0
    # each claim is timed twice: CPU seconds (the budget's clock) and wall seconds
    assert all(r.cpu_seconds >= 0 and r.seconds >= 0 for r in results)
    table = markdown_table(results)
    assert table.count("\n") == 3 and "| yes |" in table and "| CPU s | wall s |" in table


def test_the_default_bss_attack_crosses_the_teachers_boundary():
    from kdengine.experiments.phenomena import measure_bss_on_boundary
    m = measure_bss_on_boundary(0)
    assert m["moons_crossed"] >= 0.9 and m["digits_crossed"] >= 0.9, m


def test_a_claims_runs_go_through_the_engine_and_are_reused_by_hash(runs_dir):
    from kdengine import Engine, Store
    from kdengine.experiments import phenomena
    engine = Engine(Store(runs_dir), max_workers=1)
    try:
        claim = claims_by_id()["omitted_class"]
        (first,) = run_claims([claim], [0], engine=engine)
        assert first.reproduced, first.details
        runs = engine.store.list_runs()
        assert [(r["owner"], r["status"]) for r in runs] == [("phenomena", "done")]
        assert engine.store.checkpoint_path(runs[0]["id"]).exists()    # the student it measured
        (again,) = run_claims([claim], [0], engine=engine)             # the same config: reused
        assert again.details == first.details and len(engine.store.list_runs()) == 1
    finally:
        engine.shutdown()
    assert not phenomena._given                                       # the suite's own engine again
