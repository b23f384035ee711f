"""Publishing the book: the GitHub Pages workflow, `make publish`, the site's configuration, and
the API reference page (book/api.md) covering every module of the package."""

import pkgutil
import re
import sys
from pathlib import Path

import pytest
import yaml

import ddpm

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workflow() -> dict:
    return load_yaml(WORKFLOW)


@pytest.fixture(scope="module")
def config() -> dict:
    return load_yaml(ROOT / "_config.yml")


def step_index(steps: list[dict], predicate, what: str) -> int:
    found = [i for i, step in enumerate(steps) if predicate(step)]
    assert found, f"the build job has no step that {what}"
    return found[0]


def uses(step: dict, action: str) -> bool:
    return step.get("uses", "").split("@")[0] == action


# ---------------------------------------------------------------------- the workflow
def test_workflow_runs_on_push_to_main_and_by_hand(workflow):
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True
    triggers = workflow.get("on", workflow.get(True))
    assert triggers["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in triggers
    assert workflow["concurrency"]["group"], "deployments must not overlap"


def test_build_job_installs_cpu_torch_then_runs_make_book_then_uploads(workflow):
    build = workflow["jobs"]["build"]
    assert build["runs-on"] == "ubuntu-latest"
    steps = build["steps"]
    checkout = step_index(steps, lambda s: uses(s, "actions/checkout"), "checks out")
    python = step_index(steps, lambda s: uses(s, "actions/setup-python"), "sets up Python")
    assert str(steps[python]["with"]["python-version"]) == "3.11"
    assert steps[python]["with"]["cache"] == "pip"
    torch_cpu = step_index(
        steps,
        lambda s: "download.pytorch.org/whl/cpu" in s.get("run", "") and "torch" in s["run"],
        "installs torch from the CPU wheel index",
    )
    book = step_index(
        steps,
        lambda s: re.search(r"^\s*make book\s*$", s.get("run", ""), re.M) is not None,
        "runs `make book`",
    )
    upload = step_index(
        steps, lambda s: uses(s, "actions/upload-pages-artifact"), "uploads the Pages artifact"
    )
    assert checkout < python < torch_cpu < book < upload
    assert steps[upload]["with"]["path"] == "_build/html"


def test_build_job_verifies_the_released_cifar10_model_before_building(workflow):
    """A changed upload or a broken converter must stop the deployment, not reach the book."""
    steps = workflow["jobs"]["build"]["steps"]
    verify = step_index(
        steps,
        lambda s: "tools/verify_pretrained.py cifar10" in s.get("run", ""),
        "runs tools/verify_pretrained.py cifar10",
    )
    book = step_index(
        steps,
        lambda s: re.search(r"^\s*make book\s*$", s.get("run", ""), re.M) is not None,
        "runs `make book`",
    )
    assert verify < book and "continue-on-error" not in steps[verify]
    assert (ROOT / "tools" / "verify_pretrained.py").is_file()


def test_deploy_job_deploys_the_build_to_pages(workflow):
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert any(uses(s, "actions/deploy-pages") for s in deploy["steps"])
    # the build job runs third-party code (pip, notebooks): it gets no write permission
    assert workflow["permissions"] == {"contents": "read"}
    assert "permissions" not in workflow["jobs"]["build"]


def test_every_action_is_pinned_to_a_version(workflow):
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), (name, step["uses"])


# ---------------------------------------------------------------------- make publish
def make_rule(target: str) -> tuple[str, list[str]]:
    """(prerequisites, recipe lines) of a Makefile rule."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{target}:"):
            recipe = []
            for body in lines[i + 1 :]:
                if not body.startswith("\t"):
                    break
                recipe.append(body.strip())
            return line.split(":", 1)[1], recipe
    raise AssertionError(f"the Makefile has no `{target}` target")


def test_make_publish_builds_then_pushes_with_ghp_import():
    prerequisites, recipe = make_rule("publish")
    assert "book" in prerequisites.split()
    assert any(re.search(r"ghp-import -n -p -f _build/html$", line) for line in recipe), recipe
    phony = " ".join(re.findall(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M))
    assert "publish" in phony.split()


def test_ghp_import_is_in_the_dev_extra():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(req.startswith("ghp-import") for req in project["optional-dependencies"]["dev"])


def test_readme_explains_both_ways_to_publish():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Publishing the book", 1)
    assert len(section) == 2, "README needs a section '## Publishing the book'"
    text = section[1].split("\n## ", 1)[0]
    for needed in ("repository.url", "tools/set_repository.py", "GitHub Actions", "make publish"):
        assert needed in text, f"the README's publishing section does not mention {needed}"


# ---------------------------------------------------------------------- the site
def test_logo_favicon_footer_and_download_button(config):
    for key in (config["logo"], config["html"]["favicon"]):
        assert (ROOT / key).is_file(), f"{key} is missing"
    assert "creativecommons.org/licenses/by/4.0" in config["html"]["extra_footer"]
    assert config["sphinx"]["config"]["html_theme_options"]["use_download_button"] is True
    # without a recursive update, html_theme_options would replace the launch buttons
    assert config["sphinx"]["recursive_update"] is True
    assert config["execute"]["raise_on_error"] is True
    assert config["only_build_toc_files"] is True


def test_nitpick_ignores_third_party_types_only(config):
    """The strict build ignores unresolvable torch / numpy / stdlib types, never a ddpm name."""
    ignores = [(kind, re.compile(target)) for kind, target in config["sphinx"]["config"][
        "nitpick_ignore_regex"]]  # fmt: skip

    def ignored(kind: str, target: str) -> bool:
        return any(k == kind and t.fullmatch(target) for k, t in ignores)

    for target in ("torch.Tensor", "torch._C.Generator", "numpy.ndarray", "pathlib.Path",
                   "collections.abc.Callable", "Figure"):  # fmt: skip
        assert ignored("py:class", target), target
    for target in ("ddpm.diffusion.GaussianDiffusion", "ddpm.unet.UNet", "UNet", "Mistake"):
        assert not ignored("py:class", target), target
    assert not ignored("py:func", "torch.randn")


# ---------------------------------------------------------------------- the API reference
def package_modules() -> list[str]:
    """Every module of the ddpm package except ``ddpm.__main__``."""
    names = ["ddpm"]
    for info in pkgutil.walk_packages(ddpm.__path__, prefix="ddpm."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


def test_api_page_documents_every_module():
    page = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. (?:auto)?(?:py:)?module:: (\S+)", page, re.M))
    missing = [m for m in package_modules() if m not in documented]
    assert not missing, (
        f"book/api.md does not document {missing}: add a line `.. automodule:: NAME` "
        "with `:members:` to the {eval-rst} block of its section"
    )
    assert documented <= set(package_modules()), documented - set(package_modules())


def test_api_page_modules_import():
    """autodoc imports every module it documents; a failing import fails the strict build."""
    for name in package_modules():
        __import__(name)
        assert name in sys.modules
