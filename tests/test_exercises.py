"""The exercise kit (minipost/exercises.py) works: every marked region exists and its grading tests exist;
start blanks a region into code that still compiles, reset restores the file byte for byte; blanking any
region makes its tests fail and the references make them pass (checked in a temporary copy of the repo,
never in the working tree)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minipost import exercises
from minipost.exercises import EXERCISES, ExerciseError

ROOT = Path(__file__).resolve().parents[1]


def copy_of_sources(tmp_path) -> Path:
    """Only the files that hold regions, under tmp_path (start and reset touch nothing else)."""
    for ex in EXERCISES:
        (tmp_path / ex.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / ex.path, tmp_path / ex.path)
    return tmp_path


def test_every_exercise_has_a_region_and_existing_grading_tests():
    assert len(EXERCISES) >= 12
    assert len({ex.name for ex in EXERCISES}) == len(EXERCISES)
    for ex in EXERCISES:
        text = (ROOT / ex.path).read_text()
        assert exercises.goal_of(ex), ex.name
        assert ex.tests, ex.name
        for node in ex.tests:
            file, test = node.split("::")
            assert re.search(rf"^def {test}\(", (ROOT / file).read_text(), re.M), f"{ex.name}: {node} not found"
        assert text.count(f"# END EXERCISE {ex.name}\n") == len(exercises.find_regions(text.splitlines(True), ex.name, ""))


def test_start_blanks_into_valid_code_and_reset_restores_every_byte(tmp_path):
    root = copy_of_sources(tmp_path)
    for ex in EXERCISES:
        before = (root / ex.path).read_bytes()
        exercises.start(ex.name, root)
        blanked = (root / ex.path).read_text()
        assert blanked != before.decode()
        assert f'raise NotImplementedError("exercise {ex.name}: ' in blanked
        compile(blanked, ex.path, "exec")  # indentation stays valid
        with pytest.raises(ExerciseError, match="already started"):
            exercises.start(ex.name, root)  # would overwrite the student's work and the saved reference
        assert exercises.reset(ex.name, root) is True
        assert (root / ex.path).read_bytes() == before, ex.name
        assert exercises.reset(ex.name, root) is False  # nothing left to reset
    # two exercises in one file, started and reset in crossed order
    before = (root / "train_dpo.py").read_bytes()
    exercises.start("dpo_loss", root)
    exercises.start("ipo_loss", root)
    exercises.reset("dpo_loss", root)
    exercises.reset("ipo_loss", root)
    assert (root / "train_dpo.py").read_bytes() == before


def test_reset_keeps_the_attempt_and_refuses_when_markers_are_gone(tmp_path):
    root = copy_of_sources(tmp_path)
    path = root / "train_rm.py"
    before = path.read_text()
    exercises.start("bradley_terry", root)
    attempt = path.read_text().replace("raise NotImplementedError(", "return 0 * (", 1)
    path.write_text(attempt)
    exercises.reset("bradley_terry", root)
    assert path.read_text() == before
    assert "return 0 * (" in (root / ".exercises" / "bradley_terry.attempt.txt").read_text()
    exercises.start("bradley_terry", root)
    path.write_text(path.read_text().replace("# END EXERCISE bradley_terry\n", ""))
    with pytest.raises(ExerciseError, match="no '# END EXERCISE bradley_terry' line"):
        exercises.reset("bradley_terry", root)
    with pytest.raises(ExerciseError, match="unknown exercise"):
        exercises.start("not_an_exercise", root)


def test_every_blanked_region_fails_its_tests_and_the_references_pass():
    """`verify` works in its own temporary copy: one forked pytest per exercise, then one for all references."""
    out = subprocess.run([sys.executable, "-m", "minipost.exercises", "verify"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"verified {len(EXERCISES)} exercise(s)" in out.stdout


def test_command_line_cycle_start_check_fails_reset_check_passes(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns(".git", "checkpoints", "bench", "docs", ".exercises",
                                                              "__pycache__", ".pytest_cache"))
    cli = lambda *a: subprocess.run([sys.executable, "-m", "minipost.exercises", *a], cwd=root, capture_output=True,
                                    text=True, timeout=300)
    before = (root / "train_ppo.py").read_bytes()
    assert cli("start", "kl_estimators").returncode == 0
    failed = cli("check", "kl_estimators")
    assert failed.returncode == 1 and "FAIL: exercise kl_estimators" in failed.stdout
    assert "NotImplementedError" in failed.stdout
    started = [line for line in cli("list").stdout.splitlines() if line.endswith("(started)")]
    assert len(started) == 1 and " kl_estimators " in started[0]
    assert cli("reset").returncode == 0
    assert (root / "train_ppo.py").read_bytes() == before
    passed = cli("check", "kl_estimators")
    assert passed.returncode == 0 and "PASS: exercise kl_estimators" in passed.stdout


def test_every_script_says_what_it_teaches_in_its_first_paragraph():
    """--help prints the docstring's first paragraph: it ends with one 'Teaches: ...' sentence."""
    import ast

    scripts = sorted(ROOT.glob("train_*.py")) + [ROOT / "chat.py", ROOT / "pipeline.py"]
    for script in scripts:
        first = ast.get_docstring(ast.parse(script.read_text())).split("\n\n")[0]
        teaches = [line for line in first.splitlines() if line.startswith("Teaches: ")]
        assert len(teaches) == 1 and teaches[0].endswith(".") and teaches[0].count(". ") == 0, script.name


def test_start_refuses_a_region_edited_without_start(tmp_path):
    root = copy_of_sources(tmp_path)
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, check=True)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "sources")
    path = root / "train_rm.py"
    path.write_text(path.read_text().replace("r_chosen - r_rejected - margin", "r_chosen - r_rejected", 1))
    with pytest.raises(ExerciseError, match="differs from the committed code"):
        exercises.start("bradley_terry", root)  # it would save the edit as the "reference"
    git("checkout", "train_rm.py")
    exercises.start("bradley_terry", root)
    assert exercises.reset("bradley_terry", root)
