"""The statistics every finding of the report and of the layer responses is judged by: a 95% bootstrap interval
of a difference, and the verdict it allows."""

import numpy as np

BOOTSTRAP_SAMPLES = 2000  # resamples of each interval: its ends then move by well under a tenth of its width


def interval(differences: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of a difference's bootstrap resamples."""
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def resampled_seeds(seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-seed bootstrap replicates (seeds x resamples) to replicates of the mean over seeds, the seeds themselves
    resampled in each: a net's seed-to-seed spread enters its interval."""
    picks = rng.integers(0, len(seeds), (seeds.shape[1], len(seeds)))
    return seeds[picks, np.arange(seeds.shape[1])[:, None]].mean(1)


def bootstrap_difference(a: list[np.ndarray], b: list[np.ndarray], seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95% bootstrap interval, where a and b are lists of per-seed samples: seeds are
    resampled, then the samples within each resampled seed (with one seed, only the samples: the interval then
    holds the within-run noise and not the seed-to-seed spread)."""
    rng = np.random.default_rng(seed)

    def replicates(groups: list[np.ndarray]) -> np.ndarray:  # seeds x resamples, each seed's samples resampled
        return np.stack([rng.choice(g, (BOOTSTRAP_SAMPLES, len(g))).mean(1) for g in groups])

    differences = resampled_seeds(replicates(a), rng) - resampled_seeds(replicates(b), rng)
    low, high = interval(differences)
    return float(np.mean([g.mean() for g in a]) - np.mean([g.mean() for g in b])), low, high


def verdict(low: float, high: float) -> str:
    """For a claim that a difference is positive: its 95% interval above 0, below 0, or across it."""
    return "holds" if low > 0 else "does not hold" if high < 0 else "cannot tell (within the noise)"
