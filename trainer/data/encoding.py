"""A TrainDataset's encoder caches: VAE latents and text-encoder outputs, encoded by the trainer's functions
on a cache miss (on first use: `expect_first_use` encodes the captions, then `pending` says which latents
are still to encode) or all at once up front (precompute), in batches of one bucket; and the loss masks at
latent resolution (masked loss), made with them."""
from __future__ import annotations

import time
from typing import Callable

import torch

from trainer.data.cache import LatentCache, MaskCache, TextCache, text_key

ProgressFn = Callable[[int, int], None]
LatentEncodeFn = Callable[[torch.Tensor], torch.Tensor]
TextEncodeFn = Callable[[list[str]], dict[str, torch.Tensor]]


class DatasetEncodings:
    def __init__(self, dataset, batch_size: int):
        # dataset: the TrainDataset (not imported: it imports this module) whose pixels and keys are encoded
        self.dataset = dataset
        self.latent_cache: LatentCache | None = None
        self.latent_encode: LatentEncodeFn | None = None
        self.text_cache: TextCache | None = None
        self.text_encode: TextEncodeFn | None = None
        self.mask_cache: MaskCache | None = None
        self.batch_size = batch_size
        self.calls = {"latents": 0, "text": 0}  # how often the trainer's encode_fns ran
        self.encoded = 0  # latents and captions encoded by this process
        self.seconds = 0.0  # spent in the encode_fns
        # cache keys (latents and captions) an epoch can ask for that no cache held when counted
        # (expect_first_use); each leaves as it is encoded. Masks need no encoder: not counted.
        self.pending: set[str] = set()

    def encode_latents(self, batch: list[tuple[int, bool, str]]) -> None:
        t0 = time.perf_counter()
        pixels = torch.stack([self.dataset.pixels(i, f) for i, f, _ in batch])
        with torch.no_grad():
            lat = self.latent_encode(pixels)  # type: ignore[misc]
        self.calls["latents"] += 1
        if lat.shape[0] != len(batch):
            raise ValueError(f"latent encode_fn returned {lat.shape[0]} latents for {len(batch)} images")
        for (_, _, key), value in zip(batch, lat):
            self.latent_cache.put(key, {"latents": value})  # type: ignore[union-attr]
            self.pending.discard(key)
        self._count(len(batch), t0)

    def _count(self, n: int, t0: float) -> None:
        self.encoded += n
        self.seconds += time.perf_counter() - t0

    def seconds_left(self) -> float:
        """The encoding still pending, at the pace of this process's encodings so far (0 before the first)."""
        return len(self.pending) * self.seconds / self.encoded if self.encoded else 0.0

    @staticmethod
    def _cached(cache, key: str, field: str, make) -> torch.Tensor:
        got = cache.get(key)
        if got is None:  # not precomputed: make this one now
            make()
            got = cache.get(key)
        return got[field]

    def latents_for(self, item_idx: int, flip: bool, key: str) -> torch.Tensor:
        return self._cached(self.latent_cache, key, "latents", lambda: self.encode_latents([(item_idx, flip, key)]))

    def mask_for(self, item_idx: int, flip: bool, key: str) -> torch.Tensor:
        return self._cached(self.mask_cache, key, "mask", lambda: self.make_masks([(item_idx, flip, key)]))

    def make_masks(self, batch: list[tuple[int, bool, str]]) -> None:
        for item_idx, flip, key in batch:
            self.mask_cache.put(key, {"mask": self.dataset.masks.tensor(item_idx, flip)})  # type: ignore[union-attr]

    def text_for(self, caption: str) -> dict[str, torch.Tensor]:
        key = text_key(caption)
        got = self.text_cache.get(key)  # type: ignore[union-attr]
        if got is None:
            self.encode_texts([caption])
            got = self.text_cache.get(key)  # type: ignore[union-attr]
        return got  # type: ignore[return-value]

    def encode_texts(self, captions: list[str]) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.text_encode(captions)  # type: ignore[misc]
        self.calls["text"] += 1
        for i, caption in enumerate(captions):
            self.text_cache.put(text_key(caption), {k: v[i] for k, v in out.items()})  # type: ignore[union-attr]
            self.pending.discard(text_key(caption))
        self._count(len(captions), t0)

    def encode_pending(self, entries: list[tuple[int, bool, str]]) -> None:
        """Encode those of a batch's latents (item index, flip, key) that are still pending, in one encoder
        call: a batch holds one bucket, so its latents stack."""
        latents = [e for e in dict.fromkeys(entries) if e[2] in self.pending]
        if latents:
            self.encode_latents(latents)

    def expect_first_use(self) -> dict[str, int]:
        """Encode the captions now and each latent when a sample first asks for it (sample() does on a miss),
        read from the cache after. Captions go first because they are cheap (one text-encoder call per batch
        of them, where a VAE encode of one SD-sized image takes as long as a training step) and because the
        text encoders can then leave memory before step 1. `pending` holds the latents still to encode.
        Returns the stats precompute would, with "latents_pending" in place of "latents_computed"."""
        stats, todo, texts, _ = self._plan()
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            self.encode_texts(chunk)
            stats["text_computed"] += len(chunk)
        self.pending = {key for _, _, key in todo}
        del stats["latents_computed"]
        stats["latents_pending"] = len(todo)
        return {k: v for k, v in stats.items() if not k.startswith("masks_")}

    def _plan(self) -> tuple[dict[str, int], list[tuple[int, bool, str]], list[str], list[tuple[int, bool, str]]]:
        """(stats so far, latents to encode, captions to encode, masks to make): what no cache holds yet."""
        stats = {"latents_computed": 0, "latents_reused": 0, "text_computed": 0, "text_reused": 0}
        masks: list[tuple[int, bool, str]] = []
        if self.mask_cache is not None:
            stats.update(masks_computed=0, masks_reused=0)
            for entry in self.dataset.masks.keys(self.dataset.flips):
                if self.mask_cache.get(entry[2]) is None:
                    masks.append(entry)
                else:
                    stats["masks_reused"] += 1
        todo: list[tuple[int, bool, str]] = []
        texts: list[str] = []
        if self.latent_cache is not None:
            for entry in self.dataset.latent_keys():
                if self.latent_cache.get(entry[2]) is None:
                    todo.append(entry)
                else:
                    stats["latents_reused"] += 1
        if self.text_cache is not None:
            variants = {it.caption for it in self.dataset.items}
            if self.dataset.cfg.caption_dropout > 0:
                variants.add("")
            for cap in sorted(variants):
                if self.text_cache.get(text_key(cap)) is None:
                    texts.append(cap)
                else:
                    stats["text_reused"] += 1
        return stats, todo, texts, masks

    def precompute(self, progress_cb: ProgressFn | None = None) -> dict[str, int]:
        """TrainDataset.precompute: encode whatever is not cached yet, latents by bucket, then captions, then
        masks (their stats only when masks are on)."""
        stats, todo, texts, masks = self._plan()
        total = len(todo) + len(texts) + len(masks)
        done = 0
        if progress_cb:
            progress_cb(0, total)
        by_bucket: dict[tuple[int, int], list[tuple[int, bool, str]]] = {}
        for entry in todo:
            by_bucket.setdefault(self.dataset.placements[entry[0]].bucket, []).append(entry)
        bs = self.batch_size
        # latents one bucket at a time (a batch stacks same-size images), then the captions
        chunks = [(self.encode_latents, "latents_computed", entries[i:i + bs])
                  for entries in (by_bucket[b] for b in sorted(by_bucket)) for i in range(0, len(entries), bs)]
        chunks += [(self.encode_texts, "text_computed", texts[i:i + bs]) for i in range(0, len(texts), bs)]
        chunks += [(self.make_masks, "masks_computed", masks[i:i + bs]) for i in range(0, len(masks), bs)]
        for encode, stat, chunk in chunks:
            encode(chunk)
            stats[stat] += len(chunk)
            done += len(chunk)
            if progress_cb:
                progress_cb(done, total)
        return stats
