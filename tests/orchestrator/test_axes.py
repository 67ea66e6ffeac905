"""The optional grid axes budget, teacher and student (issue #13): ids, names, shared stages, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.grid import expand, points, stages_for
from orchestrator.spec import SpecError, parse_spec
from workers.graph import subset_key, teacher_key
from workers.naming import trial_name

REPO = Path(__file__).resolve().parents[2]
SMOKE = (REPO / "sweeps" / "smoke.yaml").read_text()
GOLDEN = json.loads((REPO / "tests" / "golden" / "smoke_trial_ids.json").read_text())

TEACHER = "{arch: convnet, depth: 2, width: 32, norm: batch, epochs: 15}"
STUDENT = "{arch: convnet, depth: 2, width: 32}"


def smoke_with_axes(budget: bool, teacher: bool, student: bool) -> str:
    """sweeps/smoke.yaml with its budget, teacher and student moved into one-value grid axes."""
    text = SMOKE
    axes = ""
    if budget:
        text = text.replace("budget: {full_epochs: 5}", "")
        axes += "  budget: {full_epochs: [5]}\n"
    if teacher:
        text = text.replace(f"teacher: {TEACHER}", f"teachers: {{base: {TEACHER}}}")
        axes += "  teacher: [base]\n"
    if student:
        text = text.replace(f"student: {STUDENT}", "")
        axes += f"  student: [{STUDENT}]\n"
    assert text.count("budget:") == 1 - budget and text.count("student:") == 1 - student
    return text.replace("  seed: [0, 1]\n", "  seed: [0, 1]\n" + axes)


@pytest.mark.parametrize(
    "budget,teacher,student",
    [(True, False, False), (False, True, False), (False, False, True), (True, True, True)],
)
def test_one_value_axes_give_the_golden_ids_of_the_smoke_sweep(budget, teacher, student):
    spec = parse_spec(smoke_with_axes(budget, teacher, student))
    trials = expand(spec)
    assert sorted(t.trial_id for t in trials) == sorted(GOLDEN.values())
    # the names spell the axes out (the golden file is keyed by the names without them)
    for t in trials:
        name = trial_name(t)
        if budget:
            assert "-full_epochs5" in name
        if teacher:
            assert ("-teacher_base" in name) == (t.teacher is not None)
        if student:
            assert "-student_convnet" in name
    # what a trial computes does not change: the same shared stages
    base = parse_spec(SMOKE)
    assert stages_for(trials) == stages_for(expand(base))


def sweep(axes: str, extra: str = "", selectors: str = "[random, herding, el2n_easy]", regimes: str = "[hl, sl]"):
    return f"""
name: axes
dataset: {{name: digits}}
grid:
  selector: {selectors}
  regime: {regimes}
  ipc: [1, 2]
  seed: [0]
{axes}
selectors: {{el2n_easy: {{runs: 1, epoch: 2}}}}
train: {{batch_size: 32}}
{extra}
"""


TWO_TEACHERS = """teachers:
  strong: {arch: convnet, depth: 2, width: 16, epochs: 6}
  weak: {arch: convnet, depth: 2, width: 16, epochs: 1, min_top1_factor: 0}
"""
ONE_BUDGET_STUDENT = "student: {arch: convnet, depth: 2, width: 16}\nbudget: {epochs: 5}\n"


def test_a_budget_axis_changes_the_trials_and_only_the_subsets_that_depend_on_the_budget():
    text = sweep(
        "  budget: {full_epochs: [4, 6]}",
        "student: {arch: convnet, depth: 2, width: 16}\nteacher: {arch: convnet, depth: 2, width: 16, epochs: 2}\n",
        selectors="[random, el2n_easy, cad_prune]",
        regimes="[hl]",
    )
    spec = parse_spec(text)
    assert [b.value for b in spec.budgets] == [4.0, 6.0] and spec.extra_axes == ("budget",)
    trials = expand(spec)
    assert len(trials) == 3 * 2 * 2 == len({t.trial_id for t in trials}) == len({trial_name(t) for t in trials})
    by = {}
    for t in trials:
        by.setdefault((t.selector.name, t.ipc), {})[t.budget.value] = t
    for (sel, _), pair in by.items():
        a, b = pair[4.0], pair[6.0]
        assert a.trial_id != b.trial_id
        # random and EL2N subsets do not read the budget: shared; CAD-Prune's scoring run is K = B epochs
        assert (subset_key(a) == subset_key(b)) == (sel != "cad_prune"), sel
    assert trial_name(by[("random", 1)][4.0]) == "random-hl-ipc1-s0-full_epochs4"
    assert by[("random", 1)][6.0].to_json()["tags"] == {"budget": "full_epochs6"}


def test_a_teacher_axis_shares_every_trial_that_never_reads_the_teacher():
    spec = parse_spec(sweep("  teacher: [strong, weak]", TWO_TEACHERS + ONE_BUDGET_STUDENT))
    pts = points(spec)
    trials = expand(spec)
    assert len(pts) == 3 * 2 * 2 * 2  # selectors x regimes x IPCs x teachers
    # random-hl and el2n_easy-hl read no teacher: one trial for both teachers (2 IPCs each)
    assert len(trials) == len(pts) - 2 * 2
    assert len({t.trial_id for t in trials}) == len(trials) == len({trial_name(t) for t in trials})
    for point, t in pts:
        reads = t.regime == "sl" or t.selector.name == "herding"
        assert (t.teacher is not None) == reads
        assert dict(t.tags).get("teacher") == (point["teacher"] if reads else None)
        if reads:
            assert t.teacher == dict(spec.teachers)[point["teacher"]]
    teachers = {k for k in stages_for(trials) if k.kind == "teacher"}
    assert teachers == {teacher_key(spec.dataset, cfg) for _, cfg in spec.teachers}
    herding = {subset_key(t) for t in trials if t.selector.name == "herding"}
    assert len(herding) == 2 * 2  # features of each teacher
    el2n = {subset_key(t) for t in trials if t.selector.name == "el2n_easy"}
    assert len(el2n) == 2  # score runs train the student, whatever the teacher


def test_a_teachers_name_never_enters_its_trials_ids():
    a = expand(parse_spec(sweep("  teacher: [strong, weak]", TWO_TEACHERS + ONE_BUDGET_STUDENT)))
    renamed = TWO_TEACHERS.replace("strong", "big").replace("weak", "small")
    b = expand(parse_spec(sweep("  teacher: [big, small]", renamed + ONE_BUDGET_STUDENT)))
    assert [t.trial_id for t in a] == [t.trial_id for t in b]
    assert [trial_name(t) for t in a] != [trial_name(t) for t in b]
    # one named teacher = the same sweep with `teacher:`
    one = sweep("  teacher: [strong]", "teachers: {strong: {arch: convnet, depth: 2, width: 16, epochs: 6}}\n")
    plain = sweep("", "teacher: {arch: convnet, depth: 2, width: 16, epochs: 6}\n")
    assert [t.trial_id for t in expand(parse_spec(one + ONE_BUDGET_STUDENT))] == [
        t.trial_id for t in expand(parse_spec(plain + ONE_BUDGET_STUDENT))
    ]


def test_a_student_axis_changes_score_runs_but_not_teacher_or_random_subsets():
    text = sweep(
        "  student: [{arch: convnet, depth: 2, width: 16}, mlp]",
        "teacher: {arch: convnet, depth: 2, width: 16, epochs: 2}\nbudget: {epochs: 5}\n",
    )
    spec = parse_spec(text)
    trials = expand(spec)
    assert len(trials) == 3 * 2 * 2 * 2
    by: dict = {}
    for t in trials:
        by.setdefault((t.selector.name, t.regime, t.ipc), []).append(t)
    for (sel, _, _), (conv, mlp) in by.items():
        assert (conv.student.name, mlp.student.name) == ("convnet", "mlp")
        assert (subset_key(conv) == subset_key(mlp)) == (sel != "el2n_easy"), sel
    assert trial_name(by[("random", "hl", 1)][1]) == "random-hl-ipc1-s0-student_mlp"
    assert trial_name(by[("random", "hl", 1)][0]) == "random-hl-ipc1-s0-student_convnet(depth=2,width=16)"


def test_exclude_names_budgets_teachers_and_students():
    text = sweep(
        "  teacher: [strong, weak]\n  budget: {epochs: [5, 10]}\n  student: [{arch: convnet, depth: 2}, mlp]",
        TWO_TEACHERS + "exclude: [{budget: 10, student: mlp}, {teacher: weak, regime: sl}]\n",
    )
    pts = [p for p, _ in points(parse_spec(text))]
    assert pts and not any(p["budget"].value == 10 and p["student"].name == "mlp" for p in pts)
    assert not any(p["teacher"] == "weak" and p["regime"] == "sl" for p in pts)
    total = 3 * 2 * 2 * 2 * 2 * 2  # selectors x regimes x IPCs x teachers x budgets x students
    assert len(pts) == total - total // 4 - total // 4 + total // 16  # each rule a quarter, both a sixteenth
    with pytest.raises(SpecError) as info:
        parse_spec(text.replace("{budget: 10,", "{budget: 20,"))
    assert any(p.startswith("exclude[0].budget: 20 matches nothing in grid.budget") for p in info.value.problems)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.problems


def test_axis_mistakes_are_reported_with_their_yaml_path_and_fix():
    p = problems(sweep("  budget: {full_epochs: [2, 2.0, -1]}", "budget: {epochs: 5}\nstudent: {arch: mlp}\n"))
    assert any(x.startswith("grid.budget: and the top-level `budget:` both set the budget; keep one") for x in p), p
    assert any(x.startswith("grid.budget.full_epochs[1]: 2 repeats grid.budget.full_epochs[0]") for x in p), p
    assert any(x.startswith("grid.budget.full_epochs[2]: -1 must be > 0.0") for x in p), p
    p = problems(sweep("  budget: {full_epochs: [2], epochs: [3]}", "student: {arch: mlp}\n"))
    assert any(x.startswith("grid.budget: give exactly one of epochs, full_epochs, steps; got 2") for x in p), p
    p = problems(sweep("  teacher: [strong, wek]", TWO_TEACHERS + ONE_BUDGET_STUDENT))
    assert any(x.startswith("grid.teacher[1]: 'wek' is not declared under teachers: (did you mean 'weak'?)") for x in p)
    p = problems(sweep("  teacher: [a, b]", "teachers: {a: {arch: mlp}, b: {arch: mlp}}\n" + ONE_BUDGET_STUDENT))
    assert any(x.startswith("teachers.b: is the same teacher as teachers.a") for x in p), p
    p = problems(sweep("  teacher: [strong]", TWO_TEACHERS + "teacher: {arch: mlp}\n" + ONE_BUDGET_STUDENT))
    assert any(x.startswith("grid.teacher: and the top-level `teacher:` both set the teacher") for x in p), p
    p = problems(sweep("", TWO_TEACHERS + ONE_BUDGET_STUDENT))
    assert any(x.startswith("teachers: declares named teachers, but grid.teacher lists none") for x in p), p
    p = problems(sweep("  teacher: [strong]", ONE_BUDGET_STUDENT))
    assert any(x.startswith("grid.teacher: lists named teachers; declare them under teachers:") for x in p), p
    p = problems(sweep("  student: [{arch: convnet, depth: 5}, {arch: mlp}, mlp]", "budget: {epochs: 5}\n"))
    assert any(x.startswith("grid.student[0].depth: 5 halves a 8px image below 1px") for x in p), p
    assert any(x.startswith("grid.student[2]: mlp repeats grid.student[1]") for x in p), p


def test_plan_counts_the_axes_and_the_shared_points(tmp_path, capsys):
    f = tmp_path / "axes.yaml"
    f.write_text(
        sweep("  teacher: [strong, weak]\n  budget: {epochs: [5, 10]}", TWO_TEACHERS + "student: {arch: mlp}\n")
        + f"storage: {tmp_path}\n"
    )
    assert cli.main(["plan", str(f)]) == 0
    out = capsys.readouterr().out
    assert (
        "40 trials = 3 selectors x 2 regimes x 2 IPCs x 1 seeds x 2 budgets x 2 teachers, "
        "8 grid points sharing a trial" in out
    )
    assert "budget epochs=5 " in out and "budget epochs=10 " in out
