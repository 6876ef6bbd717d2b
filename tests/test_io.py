import os

import pandas as pd
import pytest
import torch

from batchlab import io


WRITERS = {
    "x.json": lambda path: io.write_json({"a": 1}, path),
    "x.parquet": lambda path: io.write_parquet(pd.DataFrame({"a": [1.0]}), path),
    "x.pt": lambda path: io.save_torch({"a": torch.ones(2)}, path),
}


@pytest.mark.parametrize("name", WRITERS)
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask, name):
    old = os.umask(umask)
    try:
        WRITERS[name](tmp_path / name)
    finally:
        os.umask(old)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    # the writer's error comes back naming the file (torch's own names none)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'y.txt'}: RuntimeError: killed") as caught:
        with io.atomic_path(tmp_path / "y.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed\nat inline_container.cc")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert list(tmp_path.iterdir()) == []
