"""The small kernel's configuration check (the build itself runs in the initrd guest tests)."""

from __future__ import annotations

from vmfs.guest.kernel import KERNEL_OPTIONS, missing_options


def test_a_complete_configuration_misses_nothing() -> None:
    config = "# comment\n" + "\n".join(KERNEL_OPTIONS) + "\nCONFIG_MMU=y\n"
    assert missing_options(config) == []


def test_an_option_kconfig_dropped_is_reported() -> None:
    config = "\n".join(o for o in KERNEL_OPTIONS if o != "CONFIG_IO_URING=y")
    assert missing_options(config) == ["CONFIG_IO_URING=y"]


def test_an_option_with_another_value_is_reported() -> None:
    config = "\n".join(KERNEL_OPTIONS).replace("CONFIG_NR_CPUS=2", "CONFIG_NR_CPUS=256")
    assert missing_options(config) == ["CONFIG_NR_CPUS=2"]
