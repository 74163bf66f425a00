"""Phase reconstruction: Riffusion spectrogram images back to audio.

Riffusion's own converter solves a least-squares mel inversion, then runs 32 Griffin-Lim
iterations from random phase with 17640-point FFTs. That costs about 7.5 s per 5.12-s
clip on two cores. This module gets the same magnitude faster and gives it better phase:

1. **Mel to linear magnitude** with the minimum-norm least-squares solution (the same
   one ``torch.linalg.lstsq`` finds), as one cached pseudo-inverse and one matrix product.
2. **A 4x smaller transform.** The 400-ms "padded" FFT only zero-pads a 100-ms window, so
   every fourth bin of it is exactly the 4410-point DFT of the window. Reconstruction
   works on that grid: the same signals, a quarter of the FFT work.
3. **Phase-gradient heuristic integration (PGHI)** (Průša, Balazs & Søndergaard, 2017)
   gives a starting phase from the magnitude alone: the phase's time derivative follows
   from the magnitude's frequency slope and vice versa. It integrates along the paths
   of largest magnitude; here that ordering is a maximum-bottleneck spanning tree found
   by scipy's compiled minimum spanning tree, and the sums along it are done by pointer
   jumping, so no Python loop runs per bin.
4. **Fast Griffin-Lim** (Perraudin, Balazs & Søndergaard, 2013) refines it for a few
   iterations. Only bins below the top mel frequency are touched, since all others are
   zero.

Everything is plain numpy/scipy, a pure function of (data, params).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
from PIL import Image

from riffstream.errors import RiffstreamError
from riffstream.spectrogram import (
    SpectrogramParams,
    analysis_params,
    hann_window,
    mel_filterbank,
    mel_from_image,
    params_for_image,
)

#: Fast Griffin-Lim iterations after PGHI. Fidelity levels off past about 16.
DEFAULT_ITERATIONS = 16
#: Fast Griffin-Lim momentum (Perraudin et al. recommend 0.99).
MOMENTUM = 0.99
#: Hann window constant of PGHI's Gaussian approximation (Průša et al., 2017), times length².
PGHI_GAMMA = 0.25645
#: Cells more than 40 dB below the loudest get no integrated phase (Griffin-Lim fills them in):
#: on real music fidelity is within 0.1 dB of a 1e-5 floor, at a third of the cost.
PGHI_TOLERANCE = 1e-2


@dataclass(frozen=True, eq=False)  # hashed by identity: plans are cached singletons
class _Plan:
    """Everything about a reconstruction that depends only on the params."""

    n_fft: int  # reconstruction DFT length (the window length)
    hop: int
    bins: int  # bins below the top mel frequency; the rest are silent
    window: np.ndarray  # float32 (n_fft,)
    inverse_mel: np.ndarray  # float32 (bins, mels): pseudo-inverse rows on the reconstruction grid


def _plan(params: SpectrogramParams) -> _Plan:
    """The cached plan for ``params``; images differ only in max value share one."""
    return _cached_plan(analysis_params(params))


@functools.lru_cache(maxsize=4)
def _cached_plan(params: SpectrogramParams) -> _Plan:
    filters = mel_filterbank(params)  # (mels, n_fft_padded // 2 + 1)
    ratio = params.n_fft / params.win_length
    if ratio != int(ratio):
        raise RiffstreamError("the padded duration must be a whole multiple of the window duration")
    ratio = int(ratio)
    used = int(np.flatnonzero(filters.any(axis=0))[-1]) + 1
    # Minimum-norm solution of filters @ linear = mel: the mel system has full row rank,
    # so pinv = Aᵀ (A Aᵀ)⁻¹ — a 512x512 solve instead of an SVD of the whole matrix.
    active = filters[:, :used]
    inverse = np.linalg.solve(active @ active.T, active).T  # (used, mels)
    rows = inverse[::ratio]
    return _Plan(
        n_fft=params.win_length,
        hop=params.hop_length,
        bins=rows.shape[0],
        window=hann_window(params.win_length).astype(np.float32),
        inverse_mel=np.ascontiguousarray(rows, dtype=np.float32),
    )


def linear_from_mel(mel: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Linear magnitudes (channels, frames, bins) on the reconstruction grid, from mel (channels, mels, frames)."""
    plan = _plan(params)
    linear = np.matmul(plan.inverse_mel, mel.astype(np.float32, copy=False))  # (channels, bins, frames)
    return np.ascontiguousarray(np.maximum(linear, 0.0).transpose(0, 2, 1))


def _stft(signal: np.ndarray, plan: _Plan, frames: int) -> np.ndarray:
    """(channels, frames, bins) spectrum; frame m holds samples [m*hop, m*hop + n_fft)."""
    windows = np.lib.stride_tricks.sliding_window_view(signal, plan.n_fft, axis=-1)[..., :: plan.hop, :][..., :frames, :]
    return np.ascontiguousarray(scipy.fft.rfft(windows * plan.window, axis=-1, workers=-1)[..., : plan.bins])


@functools.lru_cache(maxsize=16)
def _overlap_gain(plan: _Plan, frames: int) -> np.ndarray:
    """1 / Σ window² at each output sample: the least-squares inverse STFT's normalisation."""
    blocks = -(-plan.n_fft // plan.hop)
    padded = np.zeros(blocks * plan.hop, np.float32)
    padded[: plan.n_fft] = plan.window**2
    total = np.zeros((frames + blocks - 1, plan.hop), np.float32)
    for block, part in enumerate(padded.reshape(blocks, plan.hop)):
        total[block : block + frames] += part
    total = total.reshape(-1)[: (frames - 1) * plan.hop + plan.n_fft]
    return np.where(total > 1e-3 * total.max(), 1.0 / np.maximum(total, 1e-12), 0.0).astype(np.float32)


def _istft(spectrum: np.ndarray, plan: _Plan) -> np.ndarray:
    """Least-squares inverse of ``_stft``: (channels, frames, bins) to (channels, samples)."""
    channels, frames, _ = spectrum.shape
    segments = scipy.fft.irfft(spectrum, n=plan.n_fft, axis=-1, workers=-1).astype(np.float32, copy=False)
    segments *= plan.window
    blocks = -(-plan.n_fft // plan.hop)
    if blocks * plan.hop != plan.n_fft:
        segments = np.pad(segments, [(0, 0), (0, 0), (0, blocks * plan.hop - plan.n_fft)])
    segments = segments.reshape(channels, frames, blocks, plan.hop)
    # Overlap-add one hop-sized block at a time: `blocks` vectorised adds in all.
    signal = np.zeros((channels, frames + blocks - 1, plan.hop), np.float32)
    for block in range(blocks):
        signal[:, block : block + frames] += segments[:, :, block]
    gain = _overlap_gain(plan, frames)
    return signal.reshape(channels, -1)[:, : gain.size] * gain


def pghi_phase(magnitude: np.ndarray, params: SpectrogramParams, known_phase: np.ndarray | None = None) -> np.ndarray:
    """Starting phase (channels, frames, bins) for ``_istft`` from magnitude alone, by PGHI.

    For a Gaussian-like window of time spread λ, and phase measured from the frame centre,
    the phase's time derivative is 2πω + (1/λ)·∂log|S|/∂ω and its frequency derivative is
    −λ·∂log|S|/∂t. Integration runs outward from the loudest cell through the loudest
    neighbours, where those estimates are reliable. ``known_phase`` (channels, k, bins)
    fixes the first k frames, and integration then starts from them, so a clip can
    continue the phase of the one before it.
    """
    plan = _plan(params)
    lam = PGHI_GAMMA * plan.n_fft**2
    phases = np.empty(magnitude.shape, np.float32)
    # Frame-start phase (what _istft's DFT uses) minus frame-centre phase, per bin.
    centre_shift = 2 * np.pi * np.arange(magnitude.shape[-1]) * (plan.n_fft // 2) / plan.n_fft
    for channel, mag in enumerate(magnitude):
        frames, bins = mag.shape
        peak = float(mag.max())
        if peak <= 0:
            phases[channel] = 0.0
            continue
        log_mag = np.log(np.maximum(mag, peak * 1e-10, dtype=np.float64))
        d_freq = np.gradient(log_mag, axis=1)  # per bin
        d_time = np.gradient(log_mag, axis=0) if frames > 1 else np.zeros_like(log_mag)  # per frame
        # Phase advance per frame step, and per bin step.
        time_step = plan.hop * (2 * np.pi * np.arange(bins) / plan.n_fft + d_freq * plan.n_fft / lam)
        freq_step = -lam * d_time / (plan.hop * plan.n_fft)
        known = None if known_phase is None else known_phase[channel] - centre_shift
        phase = _integrate_on_bottleneck_tree(mag, time_step, freq_step, peak * PGHI_TOLERANCE, known)
        phases[channel] = phase + centre_shift
    return phases


def _integrate_on_bottleneck_tree(mag: np.ndarray, time_step: np.ndarray, freq_step: np.ndarray,
                                  floor: float, known: np.ndarray | None = None) -> np.ndarray:
    """Integrate phase steps along a maximum-bottleneck spanning tree of the loud cells.

    Every loud cell is reached from the loudest cell of its region along the path whose
    quietest cell is as loud as possible, which is the order PGHI's heap visits cells in.
    Cells of the first ``len(known)`` frames start from their known phase instead, and a
    region reached from them needs no peak of its own. Quiet cells keep zero phase.
    """
    frames, bins = mag.shape
    loud_grid = mag > floor
    # Number the loud cells 0..n-1; n is a virtual root that joins each region at its peak.
    node = np.full(mag.shape, -1, dtype=np.int64)
    cells = np.flatnonzero(loud_grid.ravel())
    root = cells.size
    node.ravel()[cells] = np.arange(root)
    cost = np.log(mag.max()) - np.log(mag.ravel()[cells])  # 0 at the loudest cell
    pairs = [(node[:-1], node[1:]), (node[:, :-1], node[:, 1:])]  # time neighbours, then frequency
    tails = np.concatenate([t[(t >= 0) & (h >= 0)] for t, h in pairs])
    heads = np.concatenate([h[(t >= 0) & (h >= 0)] for t, h in pairs])
    labels, regions = scipy.ndimage.label(loud_grid)
    region_of = labels.ravel()[cells] - 1
    region_peak_cost = np.full(regions, np.inf)
    np.minimum.at(region_peak_cost, region_of, cost)
    is_peak = cost == region_peak_cost[region_of]
    peak_nodes = np.flatnonzero(is_peak)[np.unique(region_of[is_peak], return_index=True)[1]]
    start_value = np.zeros(root + 1)
    known_nodes = np.zeros(0, dtype=np.int64)
    if known is not None:
        known_nodes = node[: len(known)][node[: len(known)] >= 0]
        start_value[known_nodes] = known[node[: len(known)] >= 0]
    # Kruskal takes the cheapest edges first: known cells (0.5), then grid edges (1 and up),
    # and a region's peak edge (dearest) only when nothing else reaches that region.
    peak_cost = cost.max() + 2.0 if cost.size else 2.0
    graph = scipy.sparse.csr_matrix(
        (
            np.concatenate([np.maximum(cost[tails], cost[heads]) + 1.0, np.full(known_nodes.size, 0.5),
                            np.full(regions, peak_cost)]),
            (np.concatenate([tails, known_nodes, peak_nodes]),
             np.concatenate([heads, np.full(known_nodes.size + regions, root)])),
        ),
        shape=(root + 1, root + 1),
    )
    tree = scipy.sparse.csgraph.minimum_spanning_tree(graph)
    order, parent = scipy.sparse.csgraph.breadth_first_order(tree, root, directed=False, return_predecessors=True)
    children = order[1:]
    parents = parent[children]
    from_root = parents == root
    parents = np.where(from_root, children, parents)
    child_frame, child_bin = np.divmod(cells[children], bins)
    parent_frame, parent_bin = np.divmod(cells[parents], bins)
    t_step, f_step = time_step.ravel()[cells], freq_step.ravel()[cells]
    # Trapezoidal rule along each tree edge; a region's peak starts at phase 0.
    step = np.where(
        child_frame != parent_frame,
        (child_frame - parent_frame) * 0.5 * (t_step[parents] + t_step[children]),
        (child_bin - parent_bin) * 0.5 * (f_step[parents] + f_step[children]),
    )
    step[from_root] = start_value[children[from_root]]
    # Pointer jumping: after k rounds each node holds the sum over its 2^k nearest ancestors.
    total = np.zeros(root + 1)
    total[children] = step
    ancestor = np.full(root + 1, root, dtype=np.int64)
    ancestor[children] = np.where(from_root, root, parents)
    pending = np.flatnonzero(ancestor != root)
    while pending.size:
        above = ancestor[pending]
        total[pending] += total[above]
        ancestor[pending] = ancestor[above]
        pending = pending[ancestor[pending] != root]
    phase = np.zeros(frames * bins)
    phase[cells] = total[:root]
    return phase.reshape(frames, bins)


@dataclass
class Reconstruction:
    """A clip's audio and the complex spectrum it was made from."""

    audio: np.ndarray  # float32 (channels, frames * hop), sample n aligned with image column n / hop
    spectrum: np.ndarray  # complex64 (channels, frames, bins) on the reconstruction grid


def griffin_lim(magnitude: np.ndarray, phase: np.ndarray, params: SpectrogramParams,
                iterations: int = DEFAULT_ITERATIONS, momentum: float = MOMENTUM,
                held_phase: np.ndarray | None = None) -> Reconstruction:
    """Fast Griffin-Lim from a starting phase.

    ``held_phase`` (channels, k, bins), as unit complex numbers, pins the phase of the
    first k frames, so the clip stays coherent with audio already played there.
    """
    plan = _plan(params)
    frames = magnitude.shape[1]
    held = 0 if held_phase is None else held_phase.shape[1]
    estimate = np.empty(magnitude.shape, np.complex64)
    estimate.real, estimate.imag = np.cos(phase, dtype=np.float32), np.sin(phase, dtype=np.float32)
    estimate *= magnitude
    previous = None
    for _ in range(iterations):
        if held:
            estimate[:, :held] = held_phase
        projected = _stft(_istft(_with_magnitude(estimate, magnitude), plan), plan, frames)
        if previous is None:
            estimate = projected.copy()
        else:  # estimate = projected + momentum * (projected - previous), without temporaries
            np.subtract(projected, previous, out=estimate)
            estimate *= np.float32(momentum)
            estimate += projected
        previous = projected
    if held:
        estimate[:, :held] = held_phase
    spectrum = _with_magnitude(estimate, magnitude)
    start = plan.n_fft // 2
    return Reconstruction(audio=_istft(spectrum, plan)[:, start : start + frames * plan.hop], spectrum=spectrum)


def _with_magnitude(spectrum: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Keep the phase of ``spectrum`` and impose ``magnitude``."""
    scale = np.abs(spectrum)
    np.maximum(scale, np.float32(1e-30), out=scale)
    np.divide(magnitude, scale, out=scale)
    return spectrum * scale


def reconstruct(mel: np.ndarray, params: SpectrogramParams, iterations: int = DEFAULT_ITERATIONS,
                lead_in: np.ndarray | None = None) -> Reconstruction:
    """Audio from mel magnitudes (channels, mels, frames).

    ``lead_in`` is the spectrum (channels, k, bins) of the previous clip over this clip's
    first k frames: their phase is continued instead of invented, so that where two clips
    overlap they add up coherently.
    """
    magnitude = linear_from_mel(mel, params)
    held_phase = None if lead_in is None else lead_in / np.maximum(np.abs(lead_in), 1e-30)
    known_phase = None if lead_in is None else np.angle(lead_in)
    phase = pghi_phase(magnitude, params, known_phase)
    return griffin_lim(magnitude, phase, params, iterations, held_phase=held_phase)


def audio_from_mel(mel: np.ndarray, params: SpectrogramParams, iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """Audio (channels, frames * hop) from mel magnitudes (channels, mels, frames)."""
    return reconstruct(mel, params, iterations).audio


def image_to_audio(image: Image.Image, params: SpectrogramParams | None = None,
                   iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """Float32 audio of a Riffusion spectrogram image at the params' sample rate.

    Parameters stored in the image's EXIF take precedence over ``params``. Returns shape
    (samples,) for mono and (2, samples) for stereo; a W-pixel-wide image gives W * hop
    samples (5.12 s for 512 pixels with the defaults).
    """
    params = params_for_image(image, params)
    audio = audio_from_mel(mel_from_image(image, params), params, iterations)
    return audio[0] if audio.shape[0] == 1 else audio
