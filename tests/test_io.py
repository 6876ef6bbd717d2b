import os

import pytest

from batchlab import io


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.write_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "y.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
