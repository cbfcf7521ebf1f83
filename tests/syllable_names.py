"""A realistic list of names for the tests of records, made on the spot (nothing committed or
downloaded): names of 1 to 4 syllables from a small syllable grammar, the count of syllables
drawn as in given names (mostly 2 or 3), capitalised, one per line, some repeated."""
import numpy as np

ONSETS = ["", "b", "br", "ch", "d", "el", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "sh",
          "st", "t", "th", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ia", "ea", "y"]
CODAS = ["", "", "", "n", "l", "r", "s", "th", "x", "nd", "m"]
SYLLABLES = (1, 2, 3, 4)
SYLLABLE_SHARES = (0.12, 0.48, 0.32, 0.08)


def make_names(count, seed=0) -> list:
    """`count` names (about 6 letters on average, 2 to 17), about 1 in 8 a repeat of an earlier one."""
    rng = np.random.default_rng(seed)
    names = []
    for _ in range(count):
        if names and rng.random() < 0.12:
            names.append(names[rng.integers(len(names))])
            continue
        parts = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                 for _ in range(rng.choice(SYLLABLES, p=SYLLABLE_SHARES))]
        names.append("".join(parts).capitalize())
    return names


def write_names(path, count, seed=0) -> list:
    names = make_names(count, seed)
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return names


if __name__ == "__main__":  # python tests/syllable_names.py COUNT PATH: the list of docs/records.md
    import sys
    from pathlib import Path

    write_names(Path(sys.argv[2]), int(sys.argv[1]))
