"""The multi-modal data kind's own options (co-registered HSI + LiDAR: a synthetic scene, or a
sweep's build of a ``.mat`` scene / pixel table), declared once. In a run config they sit in
their own table, ``[data.modal]`` (``--set data.modal.patch_size=5``), not among the options
every dataset shares; the builders in ``datasets/multimodal.py`` read them from here."""

from __future__ import annotations

from dataclasses import dataclass

from fedrs.errors import ConfigError


def client_groups(text: str) -> tuple[tuple[str, ...], ...]:
    """The modality groups of a ``client_modalities`` spec (ValueError when malformed):

    - ``"hsi+lidar"``: every client paired (holds both modalities of its pixels);
    - ``"hsi,lidar"``: clients in turn hold one group each, of different pixels;
      ``"hsi+lidar,hsi,lidar"``: thirds;
    - ``"hsi|lidar"``: partner organisations (``partnered``): each region of the data is held
      by one organisation per group, with the same pixels and only its own modalities.
    """
    sep = "|" if "|" in text else ","
    if sep == "|" and "," in text:
        raise ValueError(f"{text!r}: partners ('|') and alternating clients (',') do not mix")
    groups = tuple(tuple(m.strip() for m in g.split("+") if m.strip()) for g in text.split(sep))
    if not text.strip() or any(not g for g in groups):
        raise ValueError(f"{text!r}: give e.g. 'hsi+lidar', 'hsi,lidar' or 'hsi|lidar'")
    if sep == "|" and len(groups) < 2:
        raise ValueError(f"{text!r}: partner organisations need two groups or more")
    held = [m for g in groups for m in g]
    if sep == "|" and len(held) != len(set(held)):
        raise ValueError(f"{text!r}: partner organisations hold different modalities")
    return groups


def regions_of(regions: int, organisations: int) -> list[list[int]]:
    """The client ids of each region when ``organisations`` partners share it: organisation
    g of region r is client ``r * organisations + g``."""
    return [list(range(r * organisations, (r + 1) * organisations)) for r in range(regions)]


def partnered(text: str) -> bool:
    """Whether ``client_modalities`` names partner organisations (``"hsi|lidar"``)."""
    return "|" in text


@dataclass(frozen=True)
class ModalOptions:
    """Patch side (k x k neighbourhood of each pixel, every modality) and which modalities the
    clients hold (``client_modalities``, ``client_groups``' grammar; "" = every client holds
    every modality)."""

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

    @property
    def partners(self) -> bool:
        """Partner organisations share each region's pixels (``"hsi|lidar"``)."""
        return partnered(self.client_modalities)
