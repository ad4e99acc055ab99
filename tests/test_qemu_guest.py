"""The QEMU test guest's host side without QEMU: layout blocks, config checks,
the a-b invariant and the destination comparison; and the firmware build
(skipped where the toolchain is missing)."""
import os
import shutil

import numpy as np
import pytest

from pykvmdirty.qemu import firmware, layout
from pykvmdirty.qemu.config import QemuConfig
from pykvmdirty.qemu.verify import ab_invariant, differing_pages, first_bytes

MIB = 1 << 20


def test_params_round_trip_fields():
    raw = layout.pack_params("hotspot", 2 * MIB, 10 * MIB, 5000, 7, 11, 2**52, 123)
    words = np.frombuffer(raw, dtype="<u8")
    assert words[0] == layout.PARAMS_MAGIC
    assert list(words[1:]) == [3, 2 * MIB, 10 * MIB, 5000, 7, 11, 2**52, 123]


def test_parse_status():
    vals = [layout.STATUS_MAGIC, 2, 2_000_000_000, 5, 640, 99, 10, 1]
    st = layout.parse_status(np.array(vals, dtype="<u8").tobytes())
    assert st.valid and st.state == "running" and st.workload == "ab"
    assert (st.passes, st.pages, st.tsc_hz) == (5, 640, 2_000_000_000)
    assert layout.parse_status(bytes(64)).state == "not-started"
    with pytest.raises(ValueError, match="64 bytes"):
        layout.parse_status(bytes(8))


@pytest.mark.parametrize("kw, match", [
    (dict(workload="zipf"), "workload"),
    (dict(start=0x1000), "1 MiB"),
    (dict(end=MIB + 5), "aligned"),
    (dict(end=2048 * MIB), "start < end"),
    (dict(workload="uniform", rate=0), "rate > 0"),
    (dict(bandwidth=0), "bandwidth"),
    (dict(accel="xen"), "accel"),
    (dict(guest_size=100 * MIB + 1), "guest_size"),
    (dict(port=70000), "port"),
    (dict(hot_fraction=0), "hot_fraction"),
])
def test_config_rejects(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        QemuConfig(**kw)


def test_config_hotspot_params_are_the_emulators():
    # the guest gets vCPU 0's seed, the hot-set size and the 53-bit share the
    # emulator's hotspot generator uses: the same page draws
    from pykvmdirty.migration.workloads import vcpu_seed
    c = QemuConfig(workload="hotspot", rate=1000, hot_fraction=0.1, hot_share=0.75, seed=3)
    assert c.hot_pages() == round(0.1 * c.npages)
    words = np.frombuffer(c.params(), dtype="<u8")
    assert list(words[5:8]) == [vcpu_seed(3, 0), c.hot_pages(), 3 * 2**51]


def test_ab_invariant():
    assert ab_invariant([5, 5, 5, 5]).ok
    r = ab_invariant([6, 6, 5, 5])
    assert r.ok and r.edge_page == 2
    assert ab_invariant([0, 0, 255, 255]).ok          # wraps mod 256
    assert not ab_invariant([6, 5, 6, 5]).ok           # two edges
    assert not ab_invariant([6, 4, 4]).ok              # a step of two
    assert not ab_invariant([5, 6]).ok                 # a step up
    assert ab_invariant([7]).ok


def test_first_bytes_and_differing_pages():
    a = bytearray(4 * 4096)
    for i in range(4):
        a[i * 4096] = i + 1
    assert list(first_bytes(bytes(a))) == [1, 2, 3, 4]
    b = bytearray(a)
    b[2 * 4096 + 100] ^= 1
    assert list(differing_pages(bytes(a), bytes(b))) == [2]
    assert differing_pages(bytes(a), bytes(a)).size == 0
    with pytest.raises(ValueError):
        differing_pages(bytes(a), bytes(4096))


needs_toolchain = pytest.mark.skipif(
    any(shutil.which(t) is None for t in firmware.TOOLS),
    reason="the guest image needs gcc, ld and objcopy")


@needs_toolchain
def test_firmware_builds_cached_and_rebuilds_on_change(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = firmware.image_path()
    data = open(path, "rb").read()
    assert len(data) == firmware.IMAGE_SIZE
    assert data[-16] == 0xE9                      # reset vector: a near jmp
    mtime = os.path.getmtime(path)
    assert firmware.image_path() == path and os.path.getmtime(path) == mtime
    # a changed source gives a different key: copy the sources and edit one
    gdir = tmp_path / "guest"
    shutil.copytree(firmware.GUEST_DIR, gdir)
    with open(gdir / "guest.c", "a") as f:
        f.write("\n/* changed */\n")
    monkeypatch.setattr(firmware, "GUEST_DIR", str(gdir))
    path2 = firmware.image_path()
    assert path2 != path and os.path.getsize(path2) == firmware.IMAGE_SIZE


@needs_toolchain
def test_firmware_build_error_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gdir = tmp_path / "guest"
    shutil.copytree(firmware.GUEST_DIR, gdir)
    with open(gdir / "guest.c", "a") as f:
        f.write("\nthis is not C;\n")
    monkeypatch.setattr(firmware, "GUEST_DIR", str(gdir))
    with pytest.raises(firmware.FirmwareBuildError, match="gcc"):
        firmware.image_path()
    assert not [n for n in os.listdir(tmp_path / "cache" / "pykvmdirty" / "qemu-guest")
                if n.endswith(".bin")]
