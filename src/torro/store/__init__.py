"""The key store: records, durable files, the store itself and import."""

from collections.abc import Callable

from torro.config import Settings, check_store_paths
from torro.sealing import Sealer, resolve_master_key
from torro.store.keystore import KeyStore, NewChainEntry, now_ms
from torro.store.layout import store_is_empty
from torro.store.records import KeyRecord, KeyState
from torro.store.rewrap import refuse_unfinished as refuse_unfinished_rewrap


__all__ = [
    "KeyRecord",
    "KeyState",
    "KeyStore",
    "NewChainEntry",
    "now_ms",
    "open_store",
    "store_is_empty",
]


def open_store(
    settings: Settings,
    *,
    clock: Callable[[], int] = now_ms,
    create_master_key: bool = True,
) -> KeyStore:
    """Build the key store the settings describe, with its master key.

    Nothing is read beyond what finding the master key needs; call
    :meth:`KeyStore.load` (or write inside :meth:`KeyStore.locked`).

    :param create_master_key: create the default master key file when the
        store is empty and none is configured; read-only callers say no.
    :raises ConfigError: the storage or history path is not, and cannot
        become, a directory, or the master key file lies inside the store
        (see :func:`torro.config.check_store_paths`).
    :raises StoreError: a master key rewrap of the store is unfinished
        (see :mod:`torro.store.rewrap`).
    """
    check_store_paths(settings)
    refuse_unfinished_rewrap(settings.storage_path)
    master = resolve_master_key(
        settings.master_key.get_secret_value()
        if settings.master_key is not None else None,
        settings.master_key_file,
        settings.storage_path,
        store_is_empty(settings.storage_path, settings.history_dir),
        may_create=create_master_key,
    )
    return KeyStore(
        settings.storage_path,
        Sealer(master),
        history_dir=settings.history_dir,
        encryption=settings.encryption,
        max_history=settings.max_history,
        integrity_check=settings.integrity_check,
        clock=clock,
    )

