"""Loss-scaling weightings (fixed, uncertainty, DWA, scheduled): values, learning, state round-trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from medmtl.losses import (
    WEIGHTINGS,
    DWAWeighting,
    FixedWeighting,
    ScheduledWeighting,
    UncertaintyWeighting,
    Weighting,
    available_weightings,
    build_weighting,
    register_weighting,
    schedule_value,
)

NAMES = ["seg", "cls", "aux"]


def _losses(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in values.items()}


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_registry_lists_all_strategies_and_rejects_unknown_or_duplicate():
    assert set(available_weightings()) >= {"fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "scheduled"}
    assert isinstance(build_weighting("dwa", NAMES, temperature=1.0), DWAWeighting)
    with pytest.raises(ValueError, match="did you mean"):
        build_weighting("uncertainy", NAMES)
    with pytest.raises(ValueError, match="already registered"):
        register_weighting("fixed")(DWAWeighting)
    assert WEIGHTINGS["fixed"] is FixedWeighting


def test_base_checks_names_and_losses():
    with pytest.raises(ValueError, match="duplicates"):
        FixedWeighting(["a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        FixedWeighting([])
    with pytest.raises(ValueError, match=r"unknown tasks \['nope'\]"):
        FixedWeighting(NAMES)(_losses(nope=1.0))
    with pytest.raises(ValueError, match="must be a scalar"):
        FixedWeighting(NAMES)({"seg": torch.ones(2)})
    with pytest.raises(TypeError):
        Weighting(NAMES)  # abstract


def test_fixed_weights_and_absent_task():
    w = FixedWeighting(NAMES, weights={"seg": 2.0, "aux": 0.5})
    assert w.current_weights() == {"seg": 2.0, "cls": 1.0, "aux": 0.5}
    assert float(w(_losses(seg=1.5, cls=2.0, aux=4.0))) == pytest.approx(2 * 1.5 + 2.0 + 0.5 * 4)
    assert float(w(_losses(cls=2.0))) == pytest.approx(2.0)  # others left out, not renormalised
    assert float(w({})) == 0.0
    with pytest.raises(ValueError, match="unknown tasks"):
        FixedWeighting(NAMES, weights={"typo": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        FixedWeighting(NAMES, weights={"seg": -1.0})


def test_scheduled_poly_ramp_at_0_half_end_and_beyond():
    e_total = 10
    spec = {"name": "poly", "start": 0.5, "end": 1.0, "epochs": e_total, "power": 4}
    w = ScheduledWeighting(NAMES, schedules={"seg": spec, "aux": 0.25})

    def lam(e: float) -> float:
        return 1 - 0.5 * (1 - min(e / e_total, 1.0)) ** 4

    seen = {}
    for epoch in range(2 * e_total + 1):
        seen[epoch] = w.current_weights()
        w.on_epoch_end()
    for epoch in (0, e_total // 2, e_total, 2 * e_total):
        assert seen[epoch]["seg"] == pytest.approx(lam(epoch))
        assert seen[epoch]["cls"] == 1.0
        assert seen[epoch]["aux"] == 0.25
    assert seen[0]["seg"] == pytest.approx(0.5)
    assert seen[e_total]["seg"] == pytest.approx(1.0)
    assert seen[2 * e_total]["seg"] == pytest.approx(1.0)
    assert float(w(_losses(seg=2.0, cls=1.0))) == pytest.approx(2.0 + 1.0)


def test_scheduled_weights_never_read_the_device_buffer_and_follow_a_loaded_state():
    linear = {"seg": {"name": "linear", "start": 0.0, "end": 1.0, "epochs": 4}}
    on_meta = ScheduledWeighting(NAMES, schedules=linear).to("meta")  # reading a meta tensor raises
    on_meta.set_epoch(2)
    on_meta.on_epoch_end()
    assert on_meta.weight_vector().device.type == "meta"  # computed from the host copy (epoch 3)
    saved = ScheduledWeighting(NAMES, schedules=linear)
    saved.set_epoch(3)
    loaded = ScheduledWeighting(NAMES, schedules=linear)
    loaded.load_state_dict(saved.state_dict())
    assert loaded.current_weights()["seg"] == pytest.approx(0.75)


def test_schedule_shapes_and_validation():
    assert schedule_value({"name": "linear", "start": 0.0, "end": 1.0, "epochs": 4}, 1) == pytest.approx(0.25)
    assert schedule_value({"name": "cosine", "start": 1.0, "end": 0.0, "epochs": 4}, 2) == pytest.approx(0.5)
    step = {"name": "step", "values": [0.0, 0.5, 1.0], "milestones": [2, 5]}
    assert [schedule_value(step, e) for e in (0, 1, 2, 4, 5, 9)] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="did you mean"):
        ScheduledWeighting(NAMES, schedules={"seg": {"name": "polly"}})
    with pytest.raises(ValueError, match="schedule 'poly' got parameters"):
        ScheduledWeighting(NAMES, schedules={"seg": {"name": "poly", "start": 0.5}})
    with pytest.raises(ValueError, match="epochs must be > 0"):
        ScheduledWeighting(NAMES, schedules={"seg": {"name": "linear", "start": 0, "end": 1, "epochs": 0}})
    with pytest.raises(ValueError, match="unknown tasks"):
        ScheduledWeighting(NAMES, schedules={"typo": 1.0})


def test_dwa_weights_by_hand_after_two_epochs():
    temp = 2.0
    w = DWAWeighting(NAMES, temperature=temp)
    epoch1 = {"seg": [1.0, 3.0], "cls": [2.0, 2.0], "aux": [0.5, 0.7]}
    epoch2 = {"seg": [1.0, 1.0], "cls": [1.5, 2.5], "aux": [0.6, 0.6]}
    for epoch in (epoch1, epoch2):
        assert w.current_weights() == {n: pytest.approx(1.0) for n in NAMES}
        for i in range(2):
            w({n: torch.tensor(v[i]) for n, v in epoch.items()})
        w.on_epoch_end()
    mean1 = {n: sum(v) / 2 for n, v in epoch1.items()}
    mean2 = {n: sum(v) / 2 for n, v in epoch2.items()}
    ratio = {n: mean2[n] / mean1[n] for n in NAMES}
    z = sum(math.exp(ratio[n] / temp) for n in NAMES)
    expected = {n: 3 * math.exp(ratio[n] / temp) / z for n in NAMES}
    got = w.current_weights()
    assert got == {n: pytest.approx(expected[n], rel=1e-6) for n in NAMES}
    assert sum(got.values()) == pytest.approx(3.0)
    total = w(_losses(seg=1.0, cls=2.0))
    assert float(total) == pytest.approx(expected["seg"] + 2 * expected["cls"], rel=1e-6)


def test_dwa_explicit_epoch_losses_and_eval_mode_does_not_accumulate():
    w = DWAWeighting(["a", "b"])
    w.on_epoch_end({"a": 2.0, "b": 1.0})
    w.on_epoch_end({"a": 1.0, "b": 1.0})
    ra, rb = 0.5, 1.0
    za = math.exp(ra / 2) + math.exp(rb / 2)
    assert w.current_weights()["a"] == pytest.approx(2 * math.exp(ra / 2) / za)
    w.eval()
    w(_losses(a=100.0))
    assert float(w.epoch_count.sum()) == 0.0
    with pytest.raises(ValueError, match="unknown tasks"):
        w.on_epoch_end({"c": 1.0})
    # a task absent for a whole epoch keeps its history (ratio of its last two recorded epochs)
    w.on_epoch_end({"a": 1.0})
    assert float(w.history[0, 1]) == 1.0 and float(w.history[1, 1]) == 1.0


def test_uncertainty_learns_and_exposes_parameters():
    w = UncertaintyWeighting(["a", "b"], init_log_var={"b": 1.0})
    assert w.current_weights() == {"a": pytest.approx(1.0), "b": pytest.approx(math.exp(-1.0))}
    params = list(w.parameters())
    assert len(params) == 1 and params[0] is w.log_vars
    assert w.param_groups() == [{"params": [w.log_vars], "weight_decay": 0.0}]
    losses = _losses(a=4.0, b=0.25)
    # value by hand: exp(-s) L + s
    assert w(losses).item() == pytest.approx(4.0 + math.exp(-1.0) * 0.25 + 1.0)
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    before = w.current_weights()
    for _ in range(300):
        opt.zero_grad()
        w(losses).backward()
        opt.step()
    after = w.current_weights()
    assert after != before
    # optimum of exp(-s) L + s is s = log L, i.e. weight 1 / L
    assert after["a"] == pytest.approx(1 / 4.0, rel=1e-2)
    assert after["b"] == pytest.approx(1 / 0.25, rel=1e-2)


def test_uncertainty_empty_batch_keeps_parameters_in_graph():
    w = UncertaintyWeighting(["a", "b"])
    total = w({})
    total.backward()
    assert total.item() == 0.0
    assert torch.equal(w.log_vars.grad, torch.zeros(2))


def _drive(w: Weighting, steps: list[dict[str, float]], opt: torch.optim.Optimizer | None = None) -> None:
    for i, step in enumerate(steps):
        if opt is not None:
            opt.zero_grad()
        total = w({k: torch.tensor(v) for k, v in step.items()})
        if opt is not None:
            total.backward()
            opt.step()
        if i % 2 == 1:
            w.on_epoch_end()


def _make(name: str) -> Weighting:
    if name == "scheduled":
        return ScheduledWeighting(NAMES, schedules={"seg": {"name": "linear", "start": 0.0, "end": 1.0, "epochs": 5}})
    return build_weighting(name, NAMES)


@pytest.mark.parametrize("name", ["dwa", "uncertainty", "scheduled", "fixed"])
def test_state_dict_round_trip_and_resume_reproduces_next_weights(name):
    torch.manual_seed(0)
    steps = [{n: float(torch.rand(1)) + 0.1 for n in NAMES} for _ in range(8)]
    first, rest = steps[:6], steps[6:]

    reference = _make(name)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.05) if name == "uncertainty" else None
    _drive(reference, first, ref_opt)
    saved = {
        "loss": copy.deepcopy(reference.state_dict()),
        "opt": copy.deepcopy(ref_opt.state_dict()) if ref_opt else None,
    }

    resumed = _make(name)
    resumed.load_state_dict(saved["loss"])
    _assert_same_state(reference, resumed)
    res_opt = None
    if ref_opt is not None:
        res_opt = torch.optim.Adam(resumed.parameters(), lr=0.05)
        res_opt.load_state_dict(saved["opt"])
    assert resumed.current_weights() == reference.current_weights()

    _drive(reference, rest, ref_opt)
    _drive(resumed, rest, res_opt)
    assert resumed.current_weights() == reference.current_weights()
    _assert_same_state(reference, resumed)
    if name != "fixed":
        assert reference.current_weights() != _make(name).current_weights()
