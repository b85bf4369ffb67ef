"""Install truth: the wheel ``python -m build`` makes installs and works in a fresh virtual environment.

One venv: first the wheel alone (the core works; stageflow_otel names the extra), then with ``[otel]``
(the demo and ``import stageflow_otel`` work). Dependencies come from the package index, as for a user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import stageflow

ROOT = Path(__file__).resolve().parent.parent
HINT = "install it with pip install 'stageflow-core[otel]'"
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON", "VIRTUAL_ENV"))}


def sh(*argv: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command of the fresh venv, outside the checkout (so nothing imports from it)."""
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=600, cwd=cwd, env=ENV, check=check
    )


@pytest.fixture(name="dist", scope="module")
def _dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel of the checkout, built as README says (``python -m build``)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


class TestInstall:
    def test_artifacts(self, dist: Path) -> None:
        """`python -m build` writes the sdist and the wheel README names."""
        version = stageflow.__version__
        assert sorted(p.name for p in dist.iterdir()) == [
            f"stageflow_core-{version}-py3-none-any.whl",
            f"stageflow_core-{version}.tar.gz",
        ]

    def test_readme_names_these_files(self, dist: Path) -> None:
        """README's install section names the files the build writes."""
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        section = readme[readme.index("\n## Install\n") :]
        section = section[: section.index("\n## ", 1)]
        for path in sorted(dist.iterdir()):
            assert f"dist/{path.name}" in section or path.name.endswith(".tar.gz")
        assert f"dist/stageflow_core-{stageflow.__version__}.tar.gz" in section

    def test_wheel_contents(self, dist: Path) -> None:
        """The wheel ships both packages with py.typed and both console scripts, and no tests."""
        (wheel,) = dist.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
            scripts = archive.read(entry_points).decode()
        assert {"stageflow/py.typed", "stageflow_otel/py.typed", "stageflow/__main__.py"} <= set(names)
        assert {n.split("/")[0] for n in names if not n.startswith("stageflow_core-")} == {
            "stageflow",
            "stageflow_otel",
        }
        assert "stageflow = stageflow.views._cli:console_main" in scripts
        assert "stageflow-demo = stageflow_otel._demo:console_main" in scripts

    def test_fresh_venv_without_then_with_the_extra(self, dist: Path, tmp_path: Path) -> None:
        """The bare wheel runs the core and names the extra; with [otel] the demo runs."""
        (wheel,) = dist.glob("*.whl")
        env_dir = tmp_path / "venv"
        venv.create(env_dir, with_pip=True)
        bin_dir = env_dir / "bin"
        python = bin_dir / "python"
        sh(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path)

        core = sh(
            python,
            "-c",
            "import asyncio, stageflow\n"
            "from stageflow import Pipeline, StageKind, StageOutput\n"
            "async def hi(ctx): return StageOutput.ok(text=ctx.snapshot.input_text)\n"
            "g = Pipeline(name='p').with_stage('hi', hi, StageKind.WORK).build()\n"
            "print(asyncio.run(g.run(input_text='ok'))['hi'].data['text'], stageflow.__file__)",
            cwd=tmp_path,
        )
        text, location = core.stdout.split()
        assert text == "ok" and location.startswith(str(env_dir))
        assert (
            sh(bin_dir / "stageflow", "--version", cwd=tmp_path).stdout
            == f"stageflow {stageflow.__version__}\n"
        )
        bare = sh(python, "-c", "import stageflow_otel", cwd=tmp_path, check=False)
        assert bare.returncode == 1 and bare.stderr.rstrip().endswith(HINT)
        demo = sh(bin_dir / "stageflow-demo", "--runs", "1", cwd=tmp_path, check=False)
        assert demo.returncode == 1 and demo.stderr.rstrip().endswith(HINT)

        sh(python, "-m", "pip", "install", "-q", f"{wheel}[otel]", cwd=tmp_path)
        imported = sh(python, "-c", "import stageflow_otel; print(stageflow_otel.__file__)", cwd=tmp_path)
        assert imported.stdout.startswith(str(env_dir))
        run = sh(
            bin_dir / "stageflow-demo",
            "--runs",
            "5",
            "--speed",
            "0.02",
            "--seed",
            "1",
            "--metrics-port",
            "0",
            "--quiet",
            cwd=tmp_path,
        )
        assert "5 runs" in run.stdout.splitlines()
        assert sh(python, "-m", "stageflow_otel", "--version", cwd=tmp_path).stdout == (
            f"stageflow_otel {stageflow.__version__}\n"
        )
        listed = sh(python, "-m", "pip", "list", "--format=freeze", cwd=tmp_path).stdout
        assert f"stageflow-core=={stageflow.__version__}" in listed.splitlines()


class TestEditableInstall:
    def test_mypy_in_the_users_project_finds_the_editable_stageflow(self, tmp_path: Path) -> None:
        """After README's ``pip install -e``, ``mypy --strict`` in another project reads stageflow's types."""
        env_dir = tmp_path / "venv"
        venv.create(env_dir, with_pip=True)
        python = env_dir / "bin" / "python"
        sh(python, "-m", "pip", "install", "-q", "-e", ROOT, cwd=tmp_path)
        project = tmp_path / "project"
        project.mkdir()
        (project / "app.py").write_text(
            "from stageflow import Pipeline, StageContext, StageKind, StageOutput\n\n\n"
            "async def greet(ctx: StageContext) -> StageOutput:\n"
            '    return StageOutput.ok(greeting="hi")\n\n\n'
            'pipeline = Pipeline(name="hello").with_stage("greet", greet, StageKind.TRANSFORM)\n'
            'count: int = StageOutput.ok(greeting="hi")\n'
        )
        checked = sh(
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            python,
            "app.py",
            cwd=project,
            check=False,
        )
        # the one error proves mypy read stageflow's types (a missing module would be import-not-found)
        assert (checked.returncode, checked.stdout.splitlines()) == (
            1,
            [
                'app.py:9: error: Incompatible types in assignment (expression has type "StageOutput", '
                'variable has type "int")  [assignment]',
                "Found 1 error in 1 file (checked 1 source file)",
            ],
        )
