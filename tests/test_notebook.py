"""notebooks/tour.ipynb: committed as valid nbformat-4 JSON without outputs, every code cell plain Python, and the
code cells run top to bottom on a CPU with micro settings -- in a copy of the repository, since the notebook
starts (and resets) an exercise and writes checkpoints."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from minipost import exercises

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "tour.ipynb"

# A kernel in miniature, run in a child process (the copy's minipost, not this process's): every code cell exec'd
# in one namespace, top to bottom; after the first cell (the settings), the test's settings replace the notebook's.
RUNNER = """
import json, sys
cells = [c for c in json.load(open(sys.argv[1]))["cells"] if c["cell_type"] == "code"]
ns = {"__name__": "__main__"}
for n, cell in enumerate(cells):
    exec(compile("".join(cell["source"]), f"<code cell {n}>", "exec"), ns)
    if n == 0:
        ns.update(json.loads(sys.argv[2]))
print("NOTEBOOK-RESULT " + json.dumps({k: ns[k] for k in ("MICRO", "CHECKPOINTS", "blank_passes", "mine_passes")}))
"""


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_committed_notebook_is_nbformat_4_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int) and isinstance(nb["metadata"], dict)
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    for n, cell in enumerate(nb["cells"]):
        assert cell["cell_type"] in ("markdown", "code"), n
        assert isinstance(cell["metadata"], dict) and all(isinstance(s, str) for s in cell["source"]), n
        if cell["cell_type"] == "code":  # stripped: no outputs, never executed
            assert cell["execution_count"] is None and cell["outputs"] == [], f"code cell {n} has outputs"
    assert "colab.research.google.com/github/" in "".join(nb["cells"][0]["source"])  # the badge
    for n, src in enumerate(code_cells(nb)):  # plain Python: no !shell or %magic lines, which a kernel needs
        compile(src, f"<code cell {n}>", "exec")
        assert not [line for line in src.splitlines() if line.lstrip().startswith(("!", "%"))], n


def snapshot(root: Path) -> dict:
    """{path: bytes} of every file but the checkpoints and caches the notebook may write."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not {"checkpoints", "__pycache__", ".pytest_cache"} & set(p.relative_to(root).parts)}


def test_notebook_runs_top_to_bottom_in_a_copy(tmp_path, micro):
    """The notebook's code cells in order, in a copy of the repository. It starts from the session's finished micro
    stages (tests/conftest.py: pipeline.py reuses finished stages), so it runs the report, the side-by-side answers,
    the exercise and the experiment; running the micro pipeline itself is the same command that fixture ran."""
    repo = exercises._copy_of(ROOT, tmp_path / "repo")  # code, tests, notebooks; no git or checkpoints; exercises reset
    shutil.copytree(micro[0], repo / "checkpoints" / "micro")
    before = snapshot(repo)  # (checkpoints excluded)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # a CPU: MICRO is True by itself
    env.pop("MINIPOST_WORLD_SEED", None)
    settings = {"NOKL_ITERATIONS": 3}
    # run from notebooks/, as Jupyter does: the first cell finds the checkout in a parent folder
    proc = subprocess.run([sys.executable, "-c", RUNNER, "tour.ipynb", json.dumps(settings)], cwd=repo / "notebooks",
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.rsplit("NOTEBOOK-RESULT ", 1)[1])
    assert result["MICRO"] is True and result["CHECKPOINTS"] == "checkpoints/micro"
    # the exercise: its tests failed on the blanked region and passed on the notebook's implementation
    assert result["blank_passes"] is False and result["mine_passes"] is True
    assert "raise NotImplementedError" in proc.stdout  # the blanked region was shown
    # every stage of the course ran; the report's sections and figures were shown
    ck = repo / "checkpoints" / "micro"
    for stage in ("base", "sft", "rm", "ppo", "dpo", "grpo"):
        assert (ck / stage / "model.safetensors").exists(), stage
    for figure in ("win_rates.png", "best_of_n.png", "hacking.png", "pass_at_k.png"):
        assert f"[figure: checkpoints/micro/{figure}]" in proc.stdout, figure
    assert "## 1. What each stage changes" in proc.stdout and "| Correct answers |" in proc.stdout
    # side by side: one line per model for each prompt
    for stage in ("base", "sft", "ppo", "dpo", "grpo"):
        assert proc.stdout.count(f"- **{stage}** (gold ") == 5, stage
    # the experiment: PPO without KL penalty for NOKL_ITERATIONS iterations, kl_coef 0
    nokl = ck / "ppo-nokl-3"
    rows = [json.loads(line) for line in (nokl / "log.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 3 and all(r["beta"] == 0.0 for r in rows)
    assert (nokl / "hacking.png").stat().st_size > 1000
    # the checkout as the notebook found it: the exercise reset, no file changed or left behind
    after = snapshot(repo)
    assert after.keys() == before.keys(), sorted(after.keys() ^ before.keys())
    assert [p for p in before if before[p] != after[p]] == []
