"""Plots a reader can trust at a glance (issue 24 item 6): passes on an integer
axis, no compare panel with one point, the QEMU grid on a log ratio axis with
each figure's band and the runs' spread."""
import pytest

pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402

import pykvmdirty as kd  # noqa: E402
from pykvmdirty.analysis import compare as cmp  # noqa: E402
from pykvmdirty.commands import qemu as qemu_cmd  # noqa: E402


def test_migrate_plot_labels_passes_with_integers():
    r = kd.migrate(guest_size="8MiB", slots=1, rate=1000, populate=0.1)
    assert 2 <= r.npasses <= 4   # few passes: matplotlib's default puts ticks at 1.5, 2.5
    fig = r.figure()
    try:
        for ax in fig.axes:
            if ax.get_xlabel() != "pass" and ax.get_xlabel():
                continue
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)


def points_per_line(fig):
    return [len(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()]


def compare_result(sizes, dirty):
    scenario = cmp.Scenario(sizes_gib=sizes, dirty=dirty, backends=("flat", "read"),
                            repeats=1, deterministic=True)
    return cmp.run_compare(scenario)


@pytest.mark.parametrize("sizes,dirty,panels", [
    ((1, 2), (0, 100), 2), ((1,), (0, 100), 1), ((1, 2), (100,), 1), ((1,), (100,), 1)])
def test_compare_plot_has_no_panel_with_one_point(sizes, dirty, panels):
    fig = cmp.plot_figure(compare_result(sizes, dirty))
    try:
        assert len(fig.axes) == panels
        assert all(n > 1 for n in points_per_line(fig)), points_per_line(fig)
    finally:
        plt.close(fig)


def qemu_cell(name, pred, median, lo, hi, n):
    figs = ("total_time", "downtime", "dirty_sync_count", "transferred", "normal")
    return {"name": name, "prediction": {k: pred for k in figs},
            "stats": {k: {"median": median, "min": lo, "max": hi, "n": n} for k in figs}}


def test_qemu_plot_log_ratio_with_bands_and_spread():
    cells = [qemu_cell("close", 10.5, 10.0, 9.0, 12.0, 5),
             qemu_cell("60x", 600.0, 10.0, 10.0, 10.0, 1),
             qemu_cell("zero", 0.0, 10.0, 8.0, 11.0, 3)]
    fig = qemu_cmd.plot_figure(cells)
    try:
        assert len(fig.axes) == len(qemu_cmd.PLOTTED)
        for ax in fig.axes:
            assert ax.get_yscale() == "log"
            bands = ax.patches
            assert len(bands) == 3               # one band per cell
            spreads = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2
                       and ln.get_xdata()[0] == ln.get_xdata()[1]]
            assert len(spreads) == 2             # cells with repeated, differing runs
            lo, hi = ax.get_ylim()
            assert lo < 0.9 and hi > 60          # the 60x miss and the rest both in view
    finally:
        plt.close(fig)


def test_qemu_plot_writes_a_png(tmp_path):
    path = tmp_path / "g.png"
    qemu_cmd.plot([qemu_cell("a", 1.0, 1.0, 0.9, 1.1, 3)], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
