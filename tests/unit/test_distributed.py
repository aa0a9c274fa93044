"""training/distributed.py: DeepSpeed's JIT-built ops are cached in this environment and built with its ninja, unless
the user chose a cache (then that one)."""
import os
import sys
from pathlib import Path

from training.distributed import use_environment_op_cache


def test_the_op_cache_is_this_environments_and_its_ninja_comes_first(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    assert use_environment_op_cache() == Path(sys.prefix) / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "ninja").is_file():  # pip's ninja, which DeepSpeed installs: the one every start then runs
        assert os.environ["PATH"].split(os.pathsep) == [str(bin_dir), "/usr/bin", "/bin"]
        use_environment_op_cache()
        assert os.environ["PATH"].split(os.pathsep) == [str(bin_dir), "/usr/bin", "/bin"]  # not added twice


def test_a_cache_the_user_chose_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    assert use_environment_op_cache() == tmp_path and os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)
