"""The course kit: the grader's verdicts, the student notebook, and grading in a fresh process."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from course_mistakes import CORRECT, MISTAKES

import jaxlin
from jaxlin.course import assignment
from jaxlin.course.checks import CHECKS, TASKS, grade_namespace, score
from jaxlin.course.grade import grade
from jaxlin.course.stub import NotWrittenWarning

ROOT = Path(__file__).resolve().parents[1]
LECTURE = ROOT / "notebooks" / "01_lecture.py"


def lecture_functions(transform=lambda source: source) -> dict:
    """The lecture's task functions (optionally with their solutions stubbed), defined alone."""
    tree = ast.parse(transform(LECTURE.read_text()))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in TASKS]
    namespace = {"jax": jax, "jnp": jnp, "jaxlin": jaxlin}
    exec(compile(ast.Module(nodes, []), str(LECTURE), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def solutions():
    return lecture_functions()


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One compilation cache for every grading process of the session, as on a grader's machine."""
    return tmp_path_factory.mktemp("grade-cache")


def failures(verdicts):
    return [v for v in verdicts if v.status not in ("pass", "skip")]


def test_the_lecture_gets_full_marks(solutions):
    verdicts = grade_namespace(solutions)
    assert score(verdicts) == (len(verdicts), sum(len(c) for c in CHECKS.values())), failures(
        verdicts
    )


def test_every_task_of_the_lecture_has_checks(solutions):
    assert set(assignment.functions(LECTURE.read_text())) == set(TASKS) == set(CHECKS)
    assert all(callable(solutions[task]) for task in TASKS)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_gets_its_verdict_and_no_other(solutions, mistake):
    fn, task, check, words = MISTAKES[mistake]
    verdicts = grade_namespace(solutions | {task: fn})
    failed = failures(verdicts)
    assert [(v.task, v.check) for v in failed] == [(task, check)], failed
    assert words in failed[0].message + failed[0].hint, failed[0]
    assert failed[0].hint, "every failure says what to do"
    others = [v for v in verdicts if v.task != task]
    assert all(v.status == "pass" for v in others)


def test_the_catalogue_covers_the_course(solutions):
    assert len(MISTAKES) >= 12
    assert len({(task, check, words) for _, task, check, words in MISTAKES.values()}) == len(
        MISTAKES
    )  # no two entries test the same verdict
    assert {task for _, task, _, _ in MISTAKES.values()} == set(TASKS)


def test_stubs_are_not_written_for_the_grader_and_stand_in_outside_it():
    stubs = lecture_functions(lambda source: assignment.strip(source))
    verdicts = grade_namespace(stubs)
    assert {v.status for v in verdicts} == {"missing", "skip"}
    assert score(verdicts) == (0, sum(len(c) for c in CHECKS.values()))
    assert [v.task for v in verdicts if v.status == "missing"] == list(TASKS)
    y_hat, y = jnp.arange(3.0).reshape(3, 1), jnp.ones(3)
    with pytest.warns(NotWrittenWarning, match="squared_loss is not written yet"):
        stood_in = stubs["squared_loss"](y_hat, y)
    assert stood_in == jaxlin.squared_loss(y_hat, y)


def test_the_student_notebook_is_the_lecture_with_stubs(tmp_path):
    paths = assignment.write(LECTURE, tmp_path)
    lecture = assignment.read(LECTURE)
    student = json.loads(paths["student"].read_text())
    code = [c for c in lecture.cells if c.cell_type == "code"]
    student_code = [c for c in student["cells"] if c["cell_type"] == "code"]
    assert len(code) == len(student_code)
    for ours, theirs in zip(code, student_code, strict=True):
        source = "".join(theirs["source"])
        assert assignment.BEGIN not in source and "### END" not in source
        if assignment.BEGIN in ours.source:
            assert assignment.STUB in source
        else:
            assert source == ours.source  # everything else intact
    assert sum("".join(c["source"]).count(assignment.STUB) for c in student_code) == len(TASKS)
    source = json.loads(paths["nbgrader_source"].read_text())
    graded = [c for c in source["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
    assert [c["metadata"]["nbgrader"]["grade_id"] for c in graded] == [f"check-{t}" for t in TASKS]


@pytest.mark.parametrize(
    "source, message",
    [
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "without its"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "without its"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another"),
    ],
)
def test_unbalanced_markers_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        assignment.strip(source)


@pytest.mark.slow
def test_the_reference_gets_full_marks_in_a_fresh_process(tmp_path, cache):
    result = subprocess.run(
        [sys.executable, "-m", "jaxlin", "grade", "--cache-dir", cache, str(LECTURE)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    total = sum(len(c) for c in CHECKS.values())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"score: {total}/{total} - every check passed" in result.stdout


def submission(tmp_path, text, name="work.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_mistake_in_a_file_fails_with_its_hint_and_exit_1(tmp_path, solutions, cache):
    text = LECTURE.read_text().replace(
        "return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)",
        "return jnp.sum((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)",
    )
    path = submission(tmp_path, text)
    result = subprocess.run(
        [sys.executable, "-m", "jaxlin", "grade", "--cache-dir", cache, str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "squared_loss    equals jaxlin        FAIL" in result.stdout
    assert "hint: average over the batch (jnp.mean)" in result.stdout
    assert "note: cell" in result.stdout  # the lecture's own check of it stopped a cell


@pytest.mark.slow
@pytest.mark.parametrize(
    "text, words",
    [
        ("import socket\nsocket.create_connection(('example.com', 80))\n", "without network"),
        ("import subprocess\nsubprocess.run(['true'])\n", "without starting processes"),
    ],
)
def test_a_submission_has_no_network_and_no_processes(tmp_path, text, words, cache):
    report = grade(submission(tmp_path, text), timeout=300, cache_dir=cache)
    assert report.notes and words in report.notes[0]
    assert {v.status for v in report.verdicts} == {"missing", "skip"}


@pytest.mark.slow
def test_a_submission_has_a_memory_limit(tmp_path, cache):
    text = "import numpy as np\nX = np.ones((1 << 31,))\n# %%\nOK = 1\n"
    report = grade(submission(tmp_path, text), timeout=300, cache_dir=cache, memory_gib=1)
    assert not report.error and len(report.notes) == 1
    assert report.notes[0].startswith("cell 1 raised MemoryError")


@pytest.mark.slow
def test_a_submission_is_stopped_at_the_time_limit(tmp_path, cache):
    sleeper = submission(tmp_path, "import time\ntime.sleep(1000)\n")
    report = grade(sleeper, timeout=5, cache_dir=cache)
    assert "time limit of 5 s" in report.error and not report.passed
    assert score(report.verdicts) == (0, sum(len(c) for c in CHECKS.values()))


@pytest.mark.slow
def test_a_submission_that_ends_its_process_is_reported(tmp_path, cache):
    report = grade(submission(tmp_path, "import os\nos._exit(3)\n"), timeout=300, cache_dir=cache)
    assert "exit status 3" in report.error and not report.passed


@pytest.mark.slow
def test_a_submission_that_raises_systemexit_is_graded_on(tmp_path, cache):
    text = "raise SystemExit(0)\n# %%\ndef linreg(params, X):\n    return X @ params['w']\n"
    report = grade(submission(tmp_path, text), timeout=300, cache_dir=cache)
    assert not report.error and report.notes == ["cell 1 raised SystemExit: 0"]
    linreg = [v for v in report.verdicts if v.task == "linreg"]
    assert [v.status for v in linreg] == ["pass", "fail", "skip", "skip"]


@pytest.mark.slow
def test_each_submission_runs_in_its_own_process_and_empty_folder(tmp_path, cache):
    first = submission(tmp_path, "import os\nopen('left.txt', 'w').write('x')\n", "a.py")
    second = submission(
        tmp_path, "import os\nassert os.listdir('.') == [], os.listdir('.')\n", "b.py"
    )
    result = subprocess.run(
        [sys.executable, "-m", "jaxlin", "grade", "--cache-dir", cache, str(first), str(second)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1  # nothing written: every check fails
    assert "note:" not in result.stdout, result.stdout  # b.py saw an empty folder
    assert result.stdout.count("score: 0/") == 2


def test_a_function_that_never_returns_fails_its_check_alone(solutions):
    def data_iter(X, y, batch_size, key=None):
        start = 0
        while start < X.shape[0]:  # start never moves on
            pass
        yield X, y

    from jaxlin.course.checks import grade_task

    verdicts = grade_task(solutions | {"data_iter": data_iter}, "data_iter", check_timeout=2)
    assert verdicts[0].status == "fail" and "time limit of 2 s" in verdicts[0].message
    assert "start += batch_size" in verdicts[0].hint


def test_a_generator_that_never_ends_is_cut_at_one_epoch(solutions):
    def data_iter(X, y, batch_size, key=None):
        while True:
            yield X[:batch_size], y[:batch_size]

    failed = failures(grade_namespace(solutions | {"data_iter": data_iter}))
    assert [(v.task, v.check) for v in failed] == [("data_iter", "pure")]
    assert "more than the" in failed[0].message


def test_jaxlin_functions_handed_in_as_ones_own_fail(solutions):
    def linreg(params, X):
        return jaxlin.linreg(params, X)

    for fn, words in ((jaxlin.linreg, "jaxlin's own function"), (linreg, "calls jaxlin's")):
        failed = failures(grade_namespace(solutions | {"linreg": fn}))
        assert [(v.task, v.check) for v in failed] == [("linreg", "pure")]
        assert words in failed[0].message


@pytest.mark.parametrize("variant", list(CORRECT))
def test_a_correct_solution_written_otherwise_gets_full_marks(solutions, variant):
    fn, task = CORRECT[variant]
    assert failures(grade_namespace(solutions | {task: fn})) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["grade", "missing.py"], "SUBMISSION 'missing.py' not found"),
        (["grade", "notes.txt"], "must be a .ipynb or .py file"),
        (["grade", "--timeout", "0", "LECTURE"], "--timeout must be > 0"),
        (["assignment", "--out", "o", "--lecture", "nope.py"], "--lecture 'nope.py' not found"),
    ],
)
def test_command_line_errors_are_one_line(tmp_path, argv, message):
    argv = [str(LECTURE) if a == "LECTURE" else a for a in argv]
    result = subprocess.run(
        [sys.executable, "-m", "jaxlin", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"jaxlin: error: {message}"] or (
        message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    )


@pytest.mark.parametrize("command, missing", [("grade", "hypothesis"), ("assignment", "jupytext")])
def test_without_the_course_extra_the_commands_say_what_to_install(tmp_path, command, missing):
    argv = ["grade", str(LECTURE)] if command == "grade" else ["assignment", "--out", "o"]
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        f"from jaxlin.cli import main; sys.exit(main({argv!r}))"
    )
    python = [sys.executable, "-c", code]
    result = subprocess.run(python, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'jaxlin: error: the course kit needs {missing}: pip install -e ".[course]" '
        '(or pip install "jaxlin[course]")'
    ]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_student_notebook_runs_top_to_bottom(tmp_path):
    import nbclient
    import nbformat

    paths = assignment.write(LECTURE, tmp_path)
    notebook = nbformat.read(paths["student"], as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, resources={"metadata": {"path": tmp_path}}
    ).execute()
    stderr = "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("name") == "stderr"
    )
    for task in TASKS:
        assert f"{task} is not written yet" in stderr


@pytest.mark.slow
def test_nbgrader_autograde_runs_the_same_checks(tmp_path, cache):
    nbgrader = Path(sys.executable).with_name("nbgrader")
    if not nbgrader.exists():
        pytest.fail("nbgrader is part of the test install: pip install -e '.[test]'")
    paths = assignment.write(LECTURE, tmp_path)
    course = paths["nbgrader_config"].parent
    path = f"{nbgrader.parent}{os.pathsep}{os.environ['PATH']}"
    env = dict(os.environ, PATH=path, JAXLIN_GRADE_CACHE=str(cache))
    run = lambda *args: subprocess.run(  # noqa: E731
        [str(nbgrader), *args], cwd=course, env=env, capture_output=True, text=True, timeout=600
    )
    assert run("generate_assignment", "lecture", "--force").returncode == 0
    release = json.loads((course / "release" / "lecture" / "lecture.ipynb").read_text())
    student = json.loads(paths["student"].read_text())
    code = lambda nb: ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]  # noqa: E731
    assert [c for c in code(release) if c.strip() and "jaxlin's checks of" not in c] == code(
        student
    )
    mistake = json.loads(paths["nbgrader_source"].read_text())
    for cell in mistake["cells"]:  # the sum for the mean: 1 of squared_loss's 4 checks passes
        cell["source"] = "".join(cell["source"]).replace(
            "return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)",
            "return jnp.sum((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)",
        )
    (tmp_path / "mistake.ipynb").write_text(json.dumps(mistake))
    submissions = {"ref": paths["nbgrader_source"], "mistake": tmp_path / "mistake.ipynb"}
    for name, notebook in submissions.items():
        folder = course / "submitted" / name / "lecture"
        folder.mkdir(parents=True)
        shutil.copy(notebook, folder / "lecture.ipynb")
        assert run("db", "student", "add", name).returncode == 0
    result = run("autograde", "lecture")
    assert result.returncode == 0, result.stdout + result.stderr
    assert run("export").returncode == 0
    rows = (course / "grades.csv").read_text().splitlines()
    header, grades = rows[0].split(","), {r.split(",")[3]: r.split(",") for r in rows[1:]}
    total = float(sum(len(c) for c in CHECKS.values()))
    score_of = lambda name: float(grades[name][header.index("score")])  # noqa: E731
    assert float(grades["ref"][header.index("max_score")]) == total
    assert score_of("ref") == total
    assert score_of("mistake") == total - 3  # the same points as jaxlin grade
