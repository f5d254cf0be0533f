"""Errors a user can act on: each says what went wrong and how to fix it."""


class MfsError(Exception):
    """Base of every error mfs-tc reports to a user (the CLI prints it and exits non-zero)."""

    exit_code = 1


class NotAttachedError(MfsError):
    """No mfs-tc maps are pinned for this interface."""


class LayoutMismatchError(MfsError):
    """The pinned maps were made by an incompatible mfs-tc (layout version or shape differs)."""


class PermissionDeniedError(MfsError):
    """Not root, no CAP_BPF/CAP_NET_ADMIN, or no access to the pinned maps."""


class KernelFeatureError(MfsError):
    """The running kernel lacks something this operation needs."""


class InterfaceError(MfsError):
    """The interface (or network namespace) does not exist."""


class MapFullError(MfsError):
    """A map has no room for another entry."""
