"""The one folder walker (data/files.py): its rules, and every door (training sources, predict, localize, sharded
inference) finding the same files in the same order; video frames go through the checked image opener."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gapvision import distributed
from gapvision.data import files
from gapvision.data.images import IMAGE_EXTENSIONS, ImageTooLarge, set_max_image_pixels
from gapvision.data.sources import load_data
from gapvision.errors import DataError, GapvisionError
from gapvision.localize.api import expand_inputs as localize_inputs
from gapvision.localize.video import is_video, read_frames
from gapvision.runs import list_images


def _img(path: Path, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for rel in ["cat/b.png", "cat/A.PNG", "cat/sub/c.jpg.png", "cat-x/d.png", "dog/e.Png", "dog/.hidden.png",
                "dog/._resource-fork.png", ".git/f.png", "dog/.ipynb_checkpoints/g.png", "__MACOSX/dog/h.png",
                "dog/notes.txt"]:
        _img(root / rel)
    (root / "dog" / "notes.txt").write_text("not an image")
    outside = _img(tmp_path / "elsewhere" / "z.png")
    os.symlink(outside.parent, root / "dog" / "linked-folder")
    os.symlink(outside, root / "dog" / "linked-file.png")
    return root


EXPECTED = ["cat-x/d.png", "cat/A.PNG", "cat/b.png", "cat/sub/c.jpg.png", "dog/e.Png", "dog/linked-file.png"]


def test_the_walkers_rules(tree):
    found = [str(Path(f).relative_to(tree)) for f in files.walk(tree, IMAGE_EXTENSIONS)]
    assert found == EXPECTED  # hidden files and folders, __MACOSX, other extensions and symlinked folders skipped
    assert found == sorted(found)  # by path string ("cat-x/" before "cat/")
    assert files.is_hidden(".DS_Store") and files.is_hidden("__MACOSX") and not files.is_hidden("a.b.png")


def test_explicit_paths_are_kept_as_given_and_missing_ones_are_one_line_errors(tree):
    hidden = tree / "dog" / ".hidden.png"
    notes = tree / "dog" / "notes.txt"
    assert files.expand_inputs([hidden, tree / "cat" / "sub", notes], IMAGE_EXTENSIONS) == [
        hidden, tree / "cat" / "sub" / "c.jpg.png", notes]
    with pytest.raises(GapvisionError, match=r"nope: no such file or folder$"):
        files.expand_inputs([tree / "nope"], IMAGE_EXTENSIONS)


def test_every_door_finds_the_same_files(tree):
    expected = [tree / rel for rel in EXPECTED]
    assert list_images([tree]) == expected
    assert localize_inputs([tree]) == expected  # no videos in the tree
    assert distributed.inference_inputs([tree]) == [str(p) for p in expected]
    splits = load_data(str(tree), val_split=0.0)  # class folders: cat, cat-x, dog (hidden folders are no classes)
    assert splits.classes == ["cat", "cat-x", "dog"]
    assert sorted(splits.train.items) == sorted(str(p) for p in expected)


def test_video_frames_go_through_the_decompression_bomb_check(tmp_path):
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    assert is_video(gif) and len(list(read_frames(gif))) == 3
    from gapvision.data import images

    old = images.MAX_IMAGE_PIXELS
    try:
        set_max_image_pixels(100)  # each 40 x 30 frame is now over the limit
        assert not is_video(gif)  # not openable: the decoder reports it, as for any image
        with pytest.raises(ImageTooLarge):
            list(read_frames(gif))
        with pytest.raises(DataError):
            list(read_frames(tmp_path / "missing.gif"))
    finally:
        images.MAX_IMAGE_PIXELS = old
