"""The KV cache of the inference engine: one preallocated slot per sequence, rows at their own positions.

A forward pass (prefill, a decode step, a speculative verification) runs rows of tokens; each row names
the slot of its sequence and each token its position there. :meth:`SlotKVCache.step` gives the model a
view of the cache for that forward (:class:`CacheStep`, the ``KVCacheStep`` the model's attention
calls): per layer it writes every row's keys and values at their positions, then hands each row the keys
of its own slot up to the longest row's length, with a mask of the ones each query may see (its own
sequence up to its own position).

Several rows may name one slot: a speculative verification runs the k + 1 positions it checks as k + 1
rows of one token each, so that each is computed exactly as a decode step computes it (every write of a
layer lands before that layer's reads, so a row sees the keys of the rows before it). Positions past a
sequence's length hold stale values of an earlier owner; the mask never lets them in.

Keys are read up to a length rounded up to a multiple of ``KEY_BLOCK``: a masked key contributes an exact
zero, so the rounding does not change a row's result, and the shapes a decode step sees change only every
``KEY_BLOCK`` tokens.
"""

from __future__ import annotations

import torch

from groundup.model.config import ModelConfig

KEY_BLOCK = 64
"""Keys are read up to the longest row's length rounded up to this multiple."""


def visible_keys(key_len: int, positions: torch.Tensor, window: int | None = None, *,
                 capacity: int | None = None, top: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, T, L) mask of the cache's keys each query at ``positions`` (B, T) sees: its sequence up to its own
    position, and with a sliding ``window`` only the last ``window`` of those (itself included).

    A rolling cache (``capacity`` places, position p at place p % capacity) holds at place i the newest
    position written there: with ``top`` (B,) the newest position of each row's sequence, top - (top - i) mod
    capacity (negative: never written).
    """
    places = torch.arange(key_len, device=positions.device)
    if capacity is None:
        key_pos = places[None, None]  # (1, 1, L)
    else:
        key_pos = (top[:, None] - (top[:, None] - places) % capacity)[:, None]  # (B, 1, L)
    query = positions[:, :, None]  # (B, T, 1)
    mask = (key_pos <= query) & (key_pos >= 0)
    if window is not None:
        mask &= key_pos > query - window
    return mask[:, None]


def rolling_capacity(max_len: int, window: int | None) -> int:
    """Places a slot needs: all ``max_len`` positions, or with a sliding window the window plus a block of new
    tokens (a forward's writes must not overwrite keys its own queries still see), a multiple of KEY_BLOCK."""
    if window is None:
        return max_len
    return min(max_len, -(-(window + KEY_BLOCK - 1) // KEY_BLOCK) * KEY_BLOCK)


class SlotKVCache:
    """Keys and values of ``num_slots`` sequences, plus one scratch slot: (n_layer, slots + 1, nkv, capacity, hd),
    where capacity is ``max_len``, or with a sliding window about the window (see :func:`rolling_capacity`).
    With latent attention, ``k`` holds the kv latents (n_layer, slots + 1, 1, capacity, kv_lora_rank) and ``v``
    the RoPE keys (..., qk_rope_head_dim): (2·nkv·hd) / (kv_lora_rank + qk_rope_head_dim) times smaller per
    token than multi-head attention's keys and values.

    The scratch slot (index ``num_slots``) takes the writes of padding rows (see the engine's batch
    invariance), so that they never touch a sequence's keys.
    """

    def __init__(self, config: ModelConfig, num_slots: int, max_len: int | None = None, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if num_slots < 1:
            raise ValueError(f"a KV cache needs at least one slot, got {num_slots}")
        self.max_len = min(max_len or config.block_size, config.block_size)
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.num_slots = num_slots
        self.scratch = num_slots
        self.window = config.sliding_window
        # A sliding window keeps only the newest keys: position p lives at place p % capacity (a rolling cache).
        self.capacity = rolling_capacity(self.max_len, self.window)
        self.rolling = self.capacity < self.max_len
        # What a token leaves per layer (ModelConfig.kv_cache_entry): its keys and values, or with latent attention
        # the kv latent in the keys' place and the shared RoPE key in the values'.
        heads, key_features, value_features = config.kv_cache_entry
        self.k = torch.zeros((config.n_layer, num_slots + 1, heads, self.capacity, key_features), dtype=dtype,
                             device=device)
        self.v = torch.zeros((config.n_layer, num_slots + 1, heads, self.capacity, value_features), dtype=dtype,
                             device=device)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    @property
    def max_tokens_per_forward(self) -> int | None:
        """The most new tokens of one sequence a forward may write (a rolling cache's writes must not overwrite
        keys its queries still see); None: no limit."""
        return self.capacity - self.window + 1 if self.rolling else None

    def place(self, position: int) -> int:
        return position % self.capacity

    def can_copy(self, length: int, source_length: int) -> bool:
        """Whether a slot whose sequence has ``source_length`` positions still holds the keys a copy of its first
        ``length`` needs (a rolling cache may have overwritten them)."""
        return not self.rolling or source_length - length <= self.capacity - self.window

    def copy(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``source`` into slot ``target`` (a shared prompt). A rolling
        cache copies every place (see :meth:`can_copy`); the target's mask never shows it a later position."""
        length = self.capacity if self.rolling else length
        with torch.inference_mode():
            self.k[:, target, :, :length] = self.k[:, source, :, :length]
            self.v[:, target, :, :length] = self.v[:, source, :, :length]

    def read(self, slots: list[int], key_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of ``slots`` up to ``key_len`` positions: (n_layer, B, nkv, L, hd) copies."""
        index = torch.tensor(slots, device=self.k.device)
        return self.k[:, index, :, :key_len], self.v[:, index, :, :key_len]

    def commit(self, slots: list[int], positions: list[int], new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """Write one token's keys and values (n_layer, B, nkv, hd) for each row at its (slot, position)."""
        rows = torch.tensor(slots, device=self.k.device)
        at = torch.tensor([self.place(p) for p in positions], device=self.k.device)
        self.k[:, rows, :, at] = new_k.transpose(0, 1)  # the indexed place is (B, n_layer, nkv, hd)
        self.v[:, rows, :, at] = new_v.transpose(0, 1)

    def key_len(self, top: int) -> int:
        """Keys a step reads: the highest position plus one, rounded up to a multiple of KEY_BLOCK."""
        if top >= self.max_len:
            raise ValueError(f"position {top} is past the KV cache's {self.max_len} positions")
        return min(-(-(top + 1) // KEY_BLOCK) * KEY_BLOCK, self.capacity)

    def slot_tops(self, slots: list[int], positions: torch.Tensor) -> torch.Tensor | None:
        """(B,) each row's sequence's newest position in this forward (rows of one slot share it); None when
        the cache is not rolling (a place is then its position)."""
        if not self.rolling:
            return None
        index = torch.tensor(slots, device=positions.device)
        row_top = positions.amax(dim=1)
        tops = torch.full((self.num_slots + 1,), -1, dtype=row_top.dtype, device=positions.device)
        return tops.scatter_reduce(0, index, row_top, "amax")[index]

    def step(self, slots: list[int], positions: torch.Tensor, top: int) -> CacheStep:
        """The cache as a forward of tokens at ``positions`` (B, T) in ``slots`` sees it; ``top`` is the
        largest position (known to the caller, so no value is read back from the tensor)."""
        return CacheStep(self, slots, positions, self.key_len(top))


class CacheStep:
    """One forward's view of a :class:`SlotKVCache` (the model's ``KVCacheStep``)."""

    def __init__(self, cache: SlotKVCache, slots: list[int], positions: torch.Tensor, key_len: int) -> None:
        self.cache = cache
        self.positions = positions  # (B, T)
        self.key_len = key_len
        first, B = slots[0], len(slots)
        # Rows in consecutive slots read their keys through a view; otherwise (rows sharing a slot, or slots
        # out of order) through a gather.
        self._range = (first, first + B) if slots == list(range(first, first + B)) else None
        self._slots = torch.tensor(slots, device=positions.device)
        self._write_rows = self._slots[:, None]  # (B, 1), broadcast against positions (B, T)
        self._places = positions % cache.capacity if cache.rolling else positions  # (B, T)
        self.mask = visible_keys(key_len, positions, cache.window, capacity=cache.capacity if cache.rolling else None,
                                 top=cache.slot_tops(slots, positions))  # (B, 1, T, L)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache_k, cache_v = self.cache.k[layer], self.cache.v[layer]  # (S, nkv, capacity, hd)
        # (B, T) index pairs select (B, T, nkv, hd) places: the new keys in (B, T, nkv, hd) layout
        cache_k[self._write_rows, :, self._places] = k.transpose(1, 2)
        cache_v[self._write_rows, :, self._places] = v.transpose(1, 2)
        L = self.key_len
        if self._range is not None:
            lo, hi = self._range
            return cache_k[lo:hi, :, :L], cache_v[lo:hi, :, :L], self.mask
        return cache_k[self._slots, :, :L], cache_v[self._slots, :, :L], self.mask


class ReadStep:
    """A decode step's view of the cache that writes nothing (the ``KVCacheStep`` of a compiled decode step).

    ``k_read``, ``v_read`` (n_layer, B, nkv, L, hd) are the rows' keys and values as the cache holds them;
    ``update`` returns a copy with this step's new keys merged in (row ``pair_rows[p]`` takes row
    ``pair_src[p]``'s new key at ``pair_pos[p]``: every row of a slot sees the new keys of that slot's rows)
    and keeps the new keys for :meth:`SlotKVCache.commit`. A compiled graph that mutates the whole cache would
    copy it at every step; this one reads and writes only what the step needs.
    """

    def __init__(self, k_read: torch.Tensor, v_read: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 pair_rows: torch.Tensor, pair_pos: torch.Tensor, pair_src: torch.Tensor) -> None:
        self.k_read, self.v_read, self.positions, self.mask = k_read, v_read, positions, mask
        self.pair_rows, self.pair_pos, self.pair_src = pair_rows, pair_pos, pair_src
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, v = k[:, :, 0], v[:, :, 0]  # (B, nkv, hd): one token a row
        keys, values = self.k_read[layer].clone(), self.v_read[layer].clone()  # (B, nkv, L, hd)
        keys[self.pair_rows, :, self.pair_pos] = k[self.pair_src]
        values[self.pair_rows, :, self.pair_pos] = v[self.pair_src]
        self.new_k.append(k)
        self.new_v.append(v)
        return keys, values, self.mask
