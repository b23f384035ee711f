"""The book's section "The paper's own models" (chapters 8 and 9, cells tagged `paper-models`):
it runs against a stand-in cache and labels every figure as such, shows only a note without
DDPM_PRETRAINED=1, refuses a stand-in that nobody allowed, and the Pages workflow sets
DDPM_PRETRAINED=1 only on its build step, after downloading and verifying the weights.

The cells run in this process (exec of their sources after the imports of the chapter's set-up
cell), on a small stand-in of the CIFAR-10 model's layout and a small sampling plan, so the test
takes seconds; the book build runs the same cells on the real weights."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import matplotlib
import pytest
import torch
import yaml
from pretrained_standin import write_standin

from ddpm import paper_models
from ddpm.cli import build_parser
from ddpm.pretrained import PretrainedError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ["book/08_sampling.ipynb", "book/09_interpolation.ipynb"]
TAG = "paper-models"


def load(path: str) -> list[dict]:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))["cells"]


def section(path: str) -> tuple[str, list[str]]:
    """(the chapter's imports, the sources of the tagged cells)."""
    cells = load(path)
    setup = next(c for c in cells if c["cell_type"] == "code" and "import torch" in
                 "".join(c["source"]))  # fmt: skip
    tree = ast.parse("".join(setup["source"]))
    imports = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    tagged = ["".join(c["source"]) for c in cells if TAG in c["metadata"].get("tags", [])]
    return "\n".join(imports), tagged


@pytest.fixture
def run_section(monkeypatch, capsys):
    """Run a chapter's section; returns (stdout lines, the titles of each figure shown)."""
    shown: list[list[str]] = []

    def show(*args, **kwargs):
        for num in plt.get_fignums():
            fig = plt.figure(num)
            titles = [fig._suptitle.get_text()] if fig._suptitle is not None else []
            shown.append(titles + [ax.get_title() for ax in fig.axes])
        plt.close("all")

    monkeypatch.setattr(plt, "show", show)
    tiny = paper_models.Plan(ddim_steps=4, n_grid=4, n_branch=2, lambdas=3)
    monkeypatch.setattr(paper_models, "CPU_PLAN", tiny)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()

    def run(path: str):
        imports, cells = section(path)
        ns: dict = {}
        try:
            exec(compile(imports, f"{path}:imports", "exec"), ns)
            for i, src in enumerate(cells):
                exec(compile(src, f"{path}:{TAG}[{i}]", "exec"), ns)
        finally:
            torch.set_num_threads(threads)
            plt.close("all")
        out = capsys.readouterr().out.strip().splitlines()
        result = (out, list(shown))
        shown.clear()
        return result

    return run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(paper_models.ENV, raising=False)
    monkeypatch.delenv(paper_models.STANDIN_ENV, raising=False)
    return tmp_path / "cache"


def test_each_chapter_has_the_section_before_its_timing_cell():
    for path in CHAPTERS:
        cells = load(path)
        tagged = [i for i, c in enumerate(cells) if TAG in c["metadata"].get("tags", [])]
        assert len(tagged) >= 3, path
        heading = next(i for i, c in enumerate(cells)
                       if "".join(c["source"]).startswith("## The paper's own models"))  # fmt: skip
        assert heading < tagged[0] and tagged[-1] == len(cells) - 2, path
        assert "time.time() - start" in "".join(cells[-1]["source"])
        for i in tagged:
            src = "".join(cells[i]["source"])
            assert all(len(line) <= 78 for line in src.splitlines()), (path, i)
            assert cells[i]["outputs"] == [] and cells[i]["execution_count"] is None


@pytest.mark.parametrize("path", CHAPTERS)
def test_section_runs_on_a_stand_in_and_says_so_on_every_figure(path, cache, monkeypatch,
                                                                 run_section):  # fmt: skip
    write_standin("cifar10", small=True)
    monkeypatch.setenv(paper_models.ENV, "1")
    monkeypatch.setenv(paper_models.STANDIN_ENV, "1")
    out, figures = run_section(path)
    assert len(figures) >= 2  # 08: the grid, Fig. 6, Fig. 7; 09: Figs. 9 and 8
    for titles in figures:
        assert any(paper_models.STANDIN_LABEL in t for t in titles), titles
        assert any("DDIM" in t for t in titles), titles  # on a CPU: the sampler is named
    assert any(line.startswith(paper_models.STANDIN_LABEL) for line in out)
    # the CelebA-HQ cell: no GPU here (or no weights), so its note, not a figure
    if not torch.cuda.is_available():
        assert any("only with a GPU" in line for line in out)


@pytest.mark.parametrize("path", CHAPTERS)
def test_without_ddpm_pretrained_the_section_is_only_a_note(path, cache, run_section):
    write_standin("cifar10", small=True)  # even with weights in the cache
    out, figures = run_section(path)
    assert figures == [] and out, out
    assert all("ddpm download" in line and "DDPM_PRETRAINED=1" in line for line in out), out
    assert len(out) == 2  # one note per model (CIFAR-10, CelebA-HQ), nothing else


def test_with_ddpm_pretrained_but_no_weights_the_note_says_how(cache, monkeypatch, run_section):
    monkeypatch.setenv(paper_models.ENV, "1")
    out, figures = run_section(CHAPTERS[0])
    assert figures == [] and any("not in the cache" in line for line in out), out
    assert all("`ddpm download" in line for line in out)


def test_a_stand_in_never_reaches_the_book_unless_allowed(cache, monkeypatch, run_section):
    """DDPM_PRETRAINED=1 (as the Pages build sets) with a stand-in in the cache: an error that
    fails the build, not random images under the paper's name."""
    write_standin("cifar10", small=True)
    monkeypatch.setenv(paper_models.ENV, "1")
    for path in CHAPTERS:
        with pytest.raises(PretrainedError, match="stand-in with random weights.*must not reach"):
            run_section(path)
    monkeypatch.setenv(paper_models.STANDIN_ENV, "0")
    with pytest.raises(PretrainedError, match="stand-in"):
        paper_models.book_model("cifar10")


def test_pages_workflow_sets_ddpm_pretrained_only_on_the_build_after_download_and_verify():
    text = (ROOT / ".github/workflows/book.yml").read_text()
    assert paper_models.STANDIN_ENV not in text
    workflow = yaml.safe_load(text)
    for job in workflow["jobs"].values():
        assert paper_models.ENV not in job.get("env", {})
    steps = workflow["jobs"]["build"]["steps"]

    def index(predicate, what):
        found = [i for i, s in enumerate(steps) if predicate(s)]
        assert len(found) == 1, what
        return found[0]

    download = index(lambda s: "ddpm download cifar10" in s.get("run", ""), "download")
    verify = index(lambda s: "tools/verify_pretrained.py cifar10" in s.get("run", ""), "verify")
    setting = [i for i, s in enumerate(steps) if paper_models.ENV in s.get("env", {})]
    assert len(setting) == 1, "DDPM_PRETRAINED is set on exactly one step"
    build = setting[0]
    assert str(steps[build]["env"][paper_models.ENV]) == "1"
    assert "make book" in steps[build]["run"]
    assert download <= verify < build  # (one step may download, then verify)
    run = steps[download]["run"]
    assert run.index("ddpm download cifar10") < run.index("verify_pretrained.py")


def test_chapter_10_gives_table_1_commands_that_parse_and_the_papers_numbers():
    cells = load("book/10_evaluation.ipynb")
    text = next("".join(c["source"]) for c in cells
                if "".join(c["source"]).startswith("## The paper's own model"))  # fmt: skip
    assert cells.index(next(c for c in cells if "".join(c["source"]) == text)) == len(cells) - 2
    for number in ("3.75", "3.72", "3.70", "3.69", "3.17", "your own run"):
        assert number in text, number
    commands = [line.split("#")[0] for line in text.splitlines() if line.startswith("ddpm ")]
    assert len(commands) == 4 and any("--fid inception --num 50000" in c for c in commands)
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.command in ("download", "evaluate")
        if args.command == "evaluate":
            assert args.pretrained == "cifar10" and args.checkpoint is None


def test_plan_steps_and_the_cut_chain():
    plan = paper_models.CPU_PLAN
    assert plan.steps_from(999) == 50 and plan.steps_from(499) == 25 and plan.steps_from(1) == 2
    assert "DDIM" in plan.sampler and "1000" in plan.sampler
    gpu = paper_models.GPU_PLAN
    assert gpu.ddim_steps is None and "Algorithm 2" in gpu.sampler
    from ddpm import GaussianDiffusion, linear_beta_schedule

    full = GaussianDiffusion(linear_beta_schedule(1000))
    cut = paper_models.chain_from(full, 499)
    assert cut.num_timesteps == 500
    assert torch.equal(cut.alphas_cumprod, full.alphas_cumprod[:500])


def test_book_model_methods_on_both_plans():
    """The GPU plan's path (Algorithm 2 from any step) and the CPU plan's (DDIM on the cut
    chain), on a tiny model with T = 25: shapes, ranges, and that x_t is what is continued."""
    from ddpm import GaussianDiffusion, linear_beta_schedule
    from ddpm.unet import UNet

    torch.manual_seed(0)
    model = UNet.from_preset("digits").eval()
    diffusion = GaussianDiffusion(linear_beta_schedule(25))
    info = {"clip_sample": True, "image_size": 8, "dataset": "digits", "repo": "-",
            "num_params": 0}  # fmt: skip
    for plan in (paper_models.Plan(None, 3, 2, 3), paper_models.Plan(4, 3, 2, 3)):
        bm = paper_models.BookModel("x", model, diffusion, info, torch.device("cpu"), plan)
        x, traj = bm.sample(3, seed=0)
        assert x.shape == (3, 1, 8, 8) and x.abs().max() <= 1
        assert traj["t"][0] == 24 and traj["t"][-1] == 0 and traj["xt"].shape[1:] == x.shape
        again, _ = bm.sample(3, seed=0)
        assert torch.equal(x, again)  # seeded on the CPU
        runs = bm.continuations(traj["xt"][0, 0], 24, 2, seed=1)
        assert runs.shape == (2, 1, 8, 8) and not torch.equal(runs[0], runs[1])  # stochastic
        row = bm.interpolate(x[0], x[1], torch.linspace(0, 1, 3), 9, seed=2)
        assert row.shape == (3, 1, 8, 8) and row.abs().max() <= 1
        assert ("DDIM" in bm.caption("c")) == (plan.ddim_steps is not None)
