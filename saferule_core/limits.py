"""Every limit on what a forget request, an unlearning goal, a swap request or an artifact file may
carry, in one place.

The ROS services, the CLI and the library check against these numbers; each refusal names the
field, its size and the limit ("reason is 1048576 characters; the limit is 4096").
"""

from __future__ import annotations

from saferule_core.errors import SafeRuleError

# ----- forget requests and unlearning goals ---------------------------------------------------
MAX_REASON_CHARS = 4096
MAX_REQUESTER_CHARS = 256
MAX_SELECTOR_ID_CHARS = 256            # one episode id, robot id or bag name of a selector
MAX_SELECTOR_ENTRIES = 100_000         # per list of a selector (a server may state a lower total)
MAX_DATASET_NAME_CHARS = 1024          # a dataset name under a server's data root (a relative path)
MAX_PATH_COMPONENT_BYTES = 255         # one component of that name (NAME_MAX on Linux)
MAX_REQUEST_ID_CHARS = 128
MAX_METHOD_CHARS = 64

# ----- SwapPolicy requests --------------------------------------------------------------------
MAX_ARTIFACT_PATH_CHARS = 4096         # PATH_MAX on Linux
MAX_VERSION_CHARS = 32                 # "latest" or "v0001"

# ----- files read while loading an artifact ---------------------------------------------------
MAX_ONNX_BYTES = 64 * 1024 * 1024      # policy.onnx (our policies are well under 1 MB)
MAX_MANIFEST_BYTES = 1024 * 1024       # manifest.json
MAX_SMALL_FILE_BYTES = 4096            # manifest.sig, the registry's `latest`, key files


class LimitError(SafeRuleError):
    """An input over a stated limit (the message names the field, its size and the limit)."""


def check_chars(field: str, value: str, limit: int, error: type[SafeRuleError] = LimitError) -> None:
    if len(value) > limit:
        raise error(f"{field} is {len(value)} characters; the limit is {limit}")


def check_request_text(requester: str, reason: str, error: type[SafeRuleError] = LimitError) -> None:
    """The free-text fields a forget request keeps in the ledger."""
    check_chars("reason", reason, MAX_REASON_CHARS, error)
    check_chars("requester", requester, MAX_REQUESTER_CHARS, error)


def check_dataset_name(name: str, error: type[SafeRuleError] = LimitError) -> None:
    """A dataset name short enough to be a path: in total and in each component (else the OS
    answers ENAMETOOLONG)."""
    check_chars("dataset name", name, MAX_DATASET_NAME_CHARS, error)
    for part in name.split("/"):
        size = len(part.encode("utf-8", errors="surrogatepass"))
        if size > MAX_PATH_COMPONENT_BYTES:
            raise error(f"a component of the dataset name ({part[:32]!r}...) is {size} bytes; the limit is "
                        f"{MAX_PATH_COMPONENT_BYTES}")
