"""Writes that never leave a half-written file (data/atomic.py), used by every writer."""

import numpy as np
import pytest

from brainlm.data.atomic import atomic_path, write_npz_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "summary.json"
    write_text_atomic(target, '{"old": 1}')
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"new": ')  # half a file, then the writer dies
            raise RuntimeError("interrupted")
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_npz_round_trip_under_the_final_name(tmp_path):
    hcp_like = np.random.default_rng(0).standard_normal((200, 94)).astype(np.float32)
    write_npz_atomic(tmp_path / "example.npz", target=hcp_like, tr_s=np.float64(0.72))
    with np.load(tmp_path / "example.npz") as z:
        assert np.array_equal(z["target"], hcp_like) and float(z["tr_s"]) == 0.72
    assert [p.name for p in tmp_path.iterdir()] == ["example.npz"]  # numpy added no suffix


def test_figures_are_written_whole_or_not_at_all(tmp_path):
    import matplotlib.pyplot as plt

    from brainlm.report.figures import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig, ax = plt.subplots()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "bad.png", dpi=-5)  # matplotlib refuses: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]
