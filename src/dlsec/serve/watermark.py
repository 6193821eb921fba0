"""DAWN: watermarking the answers of a served model, and the ownership test (Szyller et al. 2021).

DAWN ("Dynamic Adversarial Watermarking of Neural Networks", Szyller, Atli, Marchal and
Asokan, ACM MM 2021, arXiv:1906.00830) does not change the model: the prediction API
answers a small, secret, keyed-hash-chosen fraction ``r_w`` of each client's queries with a
wrong label, the same wrong label every time the same client sends the same input, and
records those inputs and labels. A client that trains a surrogate on its answers (model
extraction) teaches it the wrong labels too; an independent model almost never predicts
them. The owner later shows the suspect the recorded inputs and counts how often it
answers with the watermark label.

Threat model: the client sees only the answers; the secret never leaves the server. Without
it the marked queries look like ordinary model errors, and a client cannot tell which of
its queries are marked (HMAC-SHA256 is a pseudo-random function).

Which rows are marked: ``h = HMAC-SHA256(secret, len(key_id) || key_id || float32 bytes of
the row)``; the row is marked when the first 8 bytes of ``h`` (a big-endian uint64) are
below ``fraction * 2**64``. The watermark label comes from the next 8 bytes: ``r = uint64
mod (num_classes - 1)``, and the label is ``r`` if ``r < served`` else ``r + 1``, so it is
never the label the model would have served and is uniform over the other classes. Keying
by ``key_id`` gives each API key its own watermark (a client cannot learn it by comparing
answers with another key). The same row sent again gets the same answer, so asking twice
does not reveal the mark.

Ownership test. Let ``n`` be the number of watermarked queries of a client and ``k`` the
number on which the suspect predicts the watermark label. Null hypothesis H0: the suspect
was made without the watermarked answers (its predictions do not depend on the secret).
Under H0, on each marked row the watermark label is uniform over the ``C - 1`` classes other
than the served one and independent of the suspect, so the suspect hits it with probability
``P(suspect != served) / (C - 1) <= 1 / (C - 1)``, independently across rows (distinct HMAC
outputs; a log must therefore count each distinct input once). ``k`` is then stochastically dominated by ``Binomial(n, p0)`` with ``p0 = 1/(C-1)``
and the one-sided p-value is the exact binomial tail
``P(K >= k) = sum_{j=k}^{n} C(n, j) p0^j (1 - p0)^(n - j)``, a valid (conservative) p-value.
(The paper states its ownership claims "with confidence > 1 - 2^-64"; here the exact tail
for the client's own ``n`` and ``k`` is reported instead of a fixed threshold.)

Notes:
    The watermark is only as strong as the thief's fit: it is embedded when the surrogate
    learns its training answers, wrong ones included. Measured on digits (SimpleNet, 1000
    label queries, fraction 0.05, 64 marked): a surrogate fitted to its answers (60 epochs of
    Adam, lr 1e-2) reproduces 64/64 watermark labels (p = 8.5e-62), one trained on the
    answered probabilities 56/64 (p = 6.4e-45); but a thief that stops early (dlsec's default
    TrainConfig: 30 epochs, lr 1e-3, best validation epoch) reproduces 0/64 (p = 1) and is
    not identified, and 100 epochs at lr 3e-3 give 7/64 (p = 0.58). Larger models memorise
    more readily; the paper reports its results on CNNs.

    In the server (:class:`dlsec.serve.ledger.ServedWatermark`, ``dlsec serve --watermark``,
    ``dlsec ownership``), measured on digits through the app (fraction 0.05, a label-only
    thief querying 2876 digits-like inputs, 141-159 of them marked; 4 runs, the key id
    differs each time): the fitted thief (test accuracy 0.89-0.93) reproduces 120-146 of
    them, p < 1e-90; SimpleNets trained independently (seeds 1-5) reproduce 0 or 1 of 141
    (p > 0.99); the same thief trained with the default TrainConfig (early stopping on a
    validation split; test accuracy 0.975, a better copy) reproduces 0 of 141 and escapes.

Example:
    >>> dawn = Dawn(b"a secret of at least 16 bytes", fraction=0.05, num_classes=10)
    >>> out = dawn.apply("key-1", x, probs)           # probs: the model's softmax, (N, 10)
    >>> out.answer                                    # what the client gets
    >>> x[out.marked], out.watermark_labels[out.marked]   # what the server records
    >>> ownership_p_value(suspect(x[out.marked]).argmax(1), out.watermark_labels[out.marked],
    ...                   num_classes=10).p_value
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom
from torch import Tensor, nn

from dlsec.errors import DlsecError
from dlsec.training import predict_logits

__all__ = [
    "Dawn",
    "DawnAnswer",
    "OwnershipResult",
    "WatermarkError",
    "ownership_p_value",
    "suspect_ownership",
]

MIN_SECRET_BYTES = 16
_TWO_64 = 1 << 64


class WatermarkError(DlsecError):
    """A watermark setting or an ownership test was given something it cannot use."""


@dataclass(frozen=True)
class DawnAnswer:
    """What :meth:`Dawn.apply` hands back for one batch.

    ``answer``: what the client is sent (same shape and dtype as the input answer).
    ``marked``: bool ``(N,)``, the rows answered with a watermark label.
    ``watermark_labels``: int64 ``(N,)``, the watermark label of each marked row, -1 elsewhere.
    ``served_labels``: int64 ``(N,)``, the label the model itself gave (before marking).
    """

    answer: Tensor
    marked: Tensor
    watermark_labels: Tensor
    served_labels: Tensor


@dataclass(frozen=True)
class OwnershipResult:
    """The ownership test's numbers: ``matches`` of ``n`` watermark labels reproduced
    (``agreement = matches / n``), the chance rate ``chance`` under H0 and the one-sided
    binomial ``p_value``. Small ``p_value``: the suspect learned from the watermarked answers."""

    matches: int
    n: int
    agreement: float
    chance: float
    p_value: float

    def stolen(self, alpha: float = 0.01) -> bool:
        """True when H0 (made without the watermarked answers) is rejected at level ``alpha``."""
        return self.p_value < alpha


class Dawn:
    """Keyed-hash watermarking of served answers (DAWN, Szyller et al. 2021).

    Args:
        secret: the server's watermark key, at least 16 bytes; keep it out of the model card
            and the query log.
        fraction: ``r_w``, the expected fraction of each client's queries answered with a
            watermark label, in (0, 1); the paper uses under 0.5%. Each marked query costs that
            client one wrong answer, so accuracy served drops by about ``fraction``.
        num_classes: classes of the served model (at least 2).
    """

    def __init__(self, secret: bytes, *, fraction: float, num_classes: int) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise WatermarkError(f"the watermark secret must be at least {MIN_SECRET_BYTES} bytes")
        if not 0.0 < fraction < 1.0:
            raise WatermarkError(f"watermark fraction must be in (0, 1), got {fraction!r}")
        if num_classes < 2:
            raise WatermarkError(f"watermarking needs at least 2 classes, got {num_classes}")
        self._secret = secret
        self.fraction = float(fraction)
        self.num_classes = int(num_classes)
        self._threshold = min(int(self.fraction * _TWO_64), _TWO_64 - 1)

    def __repr__(self) -> str:  # never shows the secret
        return f"Dawn(fraction={self.fraction}, num_classes={self.num_classes})"

    def _digests(self, key_id: str, x: Tensor) -> list[bytes]:
        rows = x.detach().to("cpu", torch.float32).reshape(len(x), -1).contiguous().numpy()
        # little-endian float32 on any machine; + 0.0 turns -0.0 into 0.0 (same value, same mark)
        rows = (rows + np.float32(0.0)).astype("<f4", copy=False)
        key = key_id.encode("utf-8")
        prefix = len(key).to_bytes(4, "big") + key
        # hmac.digest: the same HMAC-SHA256 as hmac.new(...).digest(), one C call per row
        return [hmac.digest(self._secret, prefix + row.tobytes(), "sha256") for row in rows]

    def marks(self, key_id: str, x: Tensor) -> Tensor:
        """Bool ``(N,)``: which rows of ``x`` this client gets a watermark label for."""
        digests = self._digests(key_id, x)
        return torch.tensor(
            [int.from_bytes(d[:8], "big") < self._threshold for d in digests], dtype=torch.bool
        )

    def _wrong(self, digest: bytes, served: int) -> int:
        r = int.from_bytes(digest[8:16], "big") % (self.num_classes - 1)
        return r if r < served else r + 1

    def wrong_labels(self, key_id: str, x: Tensor, served: Tensor) -> Tensor:
        """Int64 ``(N,)``: each row's watermark label, never equal to ``served`` (the label
        the model gives), the same for the same (key, row, served label)."""
        served_list = [int(s) for s in served.reshape(-1).tolist()]
        if len(served_list) != len(x):
            raise WatermarkError(f"{len(x)} rows but {len(served_list)} served labels")
        if any(not 0 <= s < self.num_classes for s in served_list):
            raise WatermarkError(f"served labels must be in 0..{self.num_classes - 1}")
        digests = self._digests(key_id, x)
        return torch.tensor(
            [self._wrong(d, s) for d, s in zip(digests, served_list, strict=True)],
            dtype=torch.int64,
        )

    def apply(
        self, key_id: str, x: Tensor, answer: Tensor, *, served: Tensor | None = None
    ) -> DawnAnswer:
        """Watermark one batch of answers for the client ``key_id``.

        ``answer`` is either labels ``(N,)`` (integer) or scores ``(N, C)`` (probabilities or
        logits). For labels, a marked row's label is replaced by its watermark label; for
        scores, the marked row's top score and the watermark class's score swap places, so
        the row stays a valid distribution whose argmax is the watermark label.

        ``served``: the labels ``(N,)`` the model itself gives, from which the watermark
        label is drawn (default: the answer's own labels). A server passes the argmax of
        the clean probabilities, so that a row's watermark label does not depend on what an
        output policy did to the answer (fresh noise, rounding ties): the same input gets
        the same wrong label every time.
        """
        if len(answer) != len(x):
            raise WatermarkError(f"{len(x)} rows but {len(answer)} answers")
        if answer.dim() == 1 and not answer.is_floating_point():
            top = answer.to(torch.int64)
        elif answer.dim() == 2 and answer.shape[1] == self.num_classes:
            top = answer.argmax(1)
        else:
            raise WatermarkError(
                f"answers must be labels (N,) or scores (N, {self.num_classes}), got {tuple(answer.shape)}"
            )
        if served is None:
            served = top
        else:
            served = served.reshape(-1).to(torch.int64)
            if len(served) != len(x) or bool(((served < 0) | (served >= self.num_classes)).any()):
                raise WatermarkError(
                    f"served labels must be {len(x)} labels in 0..{self.num_classes - 1}"
                )
        digests = self._digests(key_id, x)
        served_list = served.tolist()
        marked_list = [int.from_bytes(d[:8], "big") < self._threshold for d in digests]
        wm = [
            self._wrong(d, s) if m else -1
            for d, s, m in zip(digests, served_list, marked_list, strict=True)
        ]
        marked = torch.tensor(marked_list, dtype=torch.bool)
        labels = torch.tensor(wm, dtype=torch.int64)
        out = answer.clone()
        rows = marked.nonzero().flatten().to(answer.device)
        if len(rows):
            new = labels[marked].to(answer.device)
            if answer.dim() == 1:
                out[rows] = new.to(answer.dtype)
            else:
                old = top.to(answer.device)[rows]
                top, theirs = out[rows, old].clone(), out[rows, new].clone()
                out[rows, old], out[rows, new] = theirs, top
        return DawnAnswer(
            answer=out, marked=marked, watermark_labels=labels, served_labels=served.cpu()
        )


def ownership_p_value(
    suspect_predictions: Tensor,
    watermark_labels: Tensor,
    *,
    num_classes: int,
    chance: float | None = None,
) -> OwnershipResult:
    """Does a suspect reproduce a client's watermark? One-sided exact binomial test.

    Args:
        suspect_predictions: the suspect's labels ``(n,)`` on the client's watermarked inputs.
        watermark_labels: the recorded watermark labels ``(n,)`` of those inputs.
        num_classes: classes of the protected model.
        chance: the per-row probability of agreeing by chance under H0; default
            ``1 / (num_classes - 1)``, the bound derived in the module docstring.

    Returns ``OwnershipResult`` with ``p_value = P(Binomial(n, chance) >= matches)``.
    """
    if num_classes < 2:
        raise WatermarkError(f"the ownership test needs at least 2 classes, got {num_classes}")
    p0 = 1.0 / (num_classes - 1) if chance is None else float(chance)
    if not 0.0 < p0 <= 1.0:
        raise WatermarkError(f"chance agreement must be in (0, 1], got {p0!r}")
    pred = suspect_predictions.reshape(-1).cpu()
    labels = watermark_labels.reshape(-1).cpu()
    if len(pred) != len(labels):
        raise WatermarkError(f"{len(pred)} suspect predictions but {len(labels)} watermark labels")
    n = len(labels)
    if n == 0:
        raise WatermarkError(
            "no watermarked queries to test: this client's log holds no watermark labels"
        )
    matches = int((pred.to(torch.int64) == labels.to(torch.int64)).sum())
    p_value = float(binom.sf(matches - 1, n, p0)) if matches > 0 else 1.0
    return OwnershipResult(
        matches=matches, n=n, agreement=matches / n, chance=p0, p_value=min(1.0, p_value)
    )


def suspect_ownership(
    suspect: nn.Module,
    x_marked: Tensor,
    watermark_labels: Tensor,
    *,
    num_classes: int,
    tests: int = 1,
    batch_size: int = 1024,
) -> OwnershipResult:
    """Run ``suspect`` (a local model) on one client's recorded watermarked inputs and test it.

    ``tests``: how many clients' watermarks this suspect is checked against in all; the
    p-value is multiplied by it (Bonferroni, capped at 1) so that checking every client's
    log does not find a thief by chance.
    """
    if tests < 1:
        raise WatermarkError(f"tests must be at least 1, got {tests}")
    if len(x_marked) == 0:
        raise WatermarkError(
            "no watermarked queries to test: this client's log holds no watermark labels"
        )
    pred = predict_logits(suspect, x_marked, batch_size=batch_size).argmax(1)
    result = ownership_p_value(pred, watermark_labels, num_classes=num_classes)
    return dataclasses.replace(result, p_value=min(1.0, result.p_value * tests))
