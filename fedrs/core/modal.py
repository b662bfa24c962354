"""The multi-modal data kind's own options (co-registered HSI + LiDAR: a synthetic scene, or a
sweep's build of a ``.mat`` scene / pixel table), declared once. In a run config they sit in
their own table, ``[data.modal]`` (``--set data.modal.patch_size=5``), not among the options
every dataset shares; the builders in ``datasets/multimodal.py`` read them from here."""

from __future__ import annotations

from dataclasses import dataclass

from fedrs.errors import ConfigError


def client_groups(text: str) -> tuple[tuple[str, ...], ...]:
    """``"hsi+lidar"`` -> every client paired; ``"hsi,lidar"`` -> alternating single-modality
    clients; ``"hsi+lidar,hsi,lidar"`` -> thirds (ValueError when a group is empty)."""
    groups = tuple(tuple(m.strip() for m in g.split("+") if m.strip()) for g in text.split(","))
    if not text.strip() or any(not g for g in groups):
        raise ValueError(f"{text!r}: give e.g. 'hsi+lidar' or 'hsi,lidar'")
    return groups


@dataclass(frozen=True)
class ModalOptions:
    """Patch side (k x k neighbourhood of each pixel, every modality) and which modalities the
    clients hold in turn (``client_modalities``; "" = every client holds every modality)."""

    patch_size: int = 7
    client_modalities: str = ""

    def __post_init__(self) -> None:
        if not (self.patch_size >= 1 and self.patch_size % 2 == 1):
            raise ConfigError(
                f"data.modal.patch_size must be an odd number >= 1, got {self.patch_size}"
            )
        if self.client_modalities:
            try:
                client_groups(self.client_modalities)
            except ValueError as exc:
                raise ConfigError(f"data.modal.client_modalities {exc}") from None

    def groups(self) -> tuple[tuple[str, ...], ...]:
        """The parsed ``client_modalities`` (empty: every client holds every modality)."""
        return client_groups(self.client_modalities) if self.client_modalities else ()
