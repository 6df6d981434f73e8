"""Datasets with provenance: arrays, Parquet store, DSRL HDF5 I/O, selectors, forget ledger."""

from saferule_core.data.dataset import TRANSITION_KEYS, EpisodeInfo, OfflineDataset
from saferule_core.data.hdf5_io import export_dsrl_hdf5, import_dsrl_hdf5
from saferule_core.data.ledger import ForgetLedger, LedgerEntry, LedgerState, purge_forgotten, request_forget
from saferule_core.data.selectors import ForgetSelector, mask_selector
from saferule_core.data.store import DatasetStore, DeletionReport
from saferule_core.errors import LedgerError

__all__ = [
    "TRANSITION_KEYS", "DatasetStore", "DeletionReport", "EpisodeInfo", "ForgetLedger", "ForgetSelector",
    "LedgerEntry", "LedgerError", "LedgerState", "OfflineDataset", "export_dsrl_hdf5", "import_dsrl_hdf5",
    "mask_selector", "purge_forgotten", "request_forget",
]
