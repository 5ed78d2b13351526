"""The built wheel installs one top-level package, `fetchml`, and imports from anywhere."""

import site
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.daemon import ROOT


def test_the_wheel_installs_only_fetchml_and_imports_beside_a_client_py(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("fetchml-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    # The dashboard's files are package data.
    assert {
        "fetchml/web/index.html",
        "fetchml/web/app.js",
        "fetchml/web/vendor/uPlot.esm.js",
    } <= set(names)
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fetchml"}

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    before = {p.name for p in target.iterdir()}
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    added = {p.name for p in target.iterdir()} - before
    assert {p for p in added if not p.endswith(".dist-info")} == {"fetchml"}
    # The dependencies come from this environment's site-packages; fetchml itself must not.
    (target / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    project = tmp_path / "project"
    project.mkdir()
    (project / "client.py").write_text("raise SystemExit('the project client.py was imported')\n")
    (project / "server.py").write_text("raise SystemExit('the project server.py was imported')\n")
    script = (
        "import fetchml\n"
        f"assert fetchml.__file__.startswith({str(target)!r}), fetchml.__file__\n"
        "print(fetchml.__version__, fetchml.MetricLogger.__name__, fetchml.Client.__name__,\n"
        "      fetchml.MetricsRejected.__name__, fetchml.DeliveryTimeout.__name__)\n"
    )
    done = subprocess.run(
        [python, "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "0.1.0",
        "MetricLogger",
        "Client",
        "MetricsRejected",
        "DeliveryTimeout",
    ]
    for command, shows in (
        (["fetchml", "--version"], "fetchml 0.1.0"),
        (["fetchml-server", "--help"], "keygen"),
    ):
        shown = subprocess.run(
            [venv / "bin" / command[0], *command[1:]], cwd=project, capture_output=True, text=True
        )
        assert shown.returncode == 0 and shows in shown.stdout, shown.stderr
