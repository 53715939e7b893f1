"""A regular (non-editable) install: the wheel holds the gin files and the tasks, and it runs
from a directory that is not the checkout (the editable install is what the other tests use)."""

import glob
import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_and_finds_gin_files_from_another_directory(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheel"), REPO],
                 check=True, capture_output=True, timeout=600)
  (wheel,) = glob.glob(str(tmp_path / "wheel" / "t5x_lite-*.whl"))
  names = set(zipfile.ZipFile(wheel).namelist())
  assert {"t5x_lite_gin/recipes/quickstart.gin", "t5x_lite_gin/models/t5_1_1/base.gin",
          "t5x_lite_gin/runs/pretrain.gin", "t5x_lite/tasks/__init__.py",
          "t5x_lite/tasks/vocab.py"} <= names
  assert not any(n.startswith("tasks/") for n in names)  # no top-level `tasks` module
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                  "--target", str(site), wheel], check=True, capture_output=True, timeout=600)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site))
  probe = subprocess.run(
      [sys.executable, "-c", "import t5x_lite.tasks; from t5x_lite.config import gin_scan; "
       "print(t5x_lite.tasks.__file__); print(gin_scan.GIN_DIR)"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=True)
  tasks_file, gin_dir = probe.stdout.split()[-2:]
  assert tasks_file == str(site / "t5x_lite" / "tasks" / "__init__.py")
  assert gin_dir == str(site / "t5x_lite_gin")
  run = subprocess.run(
      [sys.executable, "-m", "t5x_lite.main", "--gin_file=recipes/quickstart.gin",
       "--gin.MODEL_DIR=m", "--list_tasks=quickstart*"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == ["mixture  quickstart_mixture  (tasks: 7)"]
