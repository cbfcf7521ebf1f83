"""Features of a text, one number per character, and the hidden units that follow them.

After Karpathy, Johnson and Fei-Fei (2015), "Visualizing and Understanding Recurrent
Networks": a unit whose activation tracks a property of the text (inside a quotation, the
position in a line) is found by correlating every unit's activation after each character with
that property. `rank_units` gives Pearson's r of each unit of each layer and state (h, and
the LSTM's c) with a feature, the strongest |r| first.

The features, the value after reading character i:
    inside quotes       1 from an opening quote mark up to its closing one. A double quote (or
                        “ ”) toggles; so does a ' that is not between two letters (an
                        apostrophe, as in don't, is); a blank line ends any quotation, as a
                        paragraph does in print
    inside parentheses  1 while an opening ( ,[ or { is unclosed
    position in line    characters since the last newline (0 on the newline itself)
    after a space       1 if the character is a space
    vowel               1 if the character is a vowel (a e i o u, either case)
"""
import numpy as np

FEATURES = ("inside quotes", "inside parentheses", "position in line", "after a space", "vowel")
OPENERS, CLOSERS = "([{", ")]}"
DOUBLE_QUOTES = '"\u201c\u201d'
VOWELS = set("aeiouAEIOU")
TOP_UNITS = 20  # units listed per feature


def inside_quotes(chars) -> np.ndarray:
    values, inside = np.zeros(len(chars)), False
    for i, ch in enumerate(chars):
        if ch == "\n" and i and chars[i - 1] == "\n":
            inside = False
        elif ch in DOUBLE_QUOTES:
            inside = ch == "\u201c" or (ch != "\u201d" and not inside)
        elif ch == "'":
            before = chars[i - 1] if i else " "
            after = chars[i + 1] if i + 1 < len(chars) else " "
            if not (before.isalpha() and after.isalpha()):
                inside = not inside
        values[i] = inside
    return values


def inside_parentheses(chars) -> np.ndarray:
    values, depth = np.zeros(len(chars)), 0
    for i, ch in enumerate(chars):
        if ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            depth = max(0, depth - 1)
        values[i] = depth > 0
    return values


def position_in_line(chars) -> np.ndarray:
    values, column = np.zeros(len(chars)), 0
    for i, ch in enumerate(chars):
        column = 0 if ch == "\n" else column + 1
        values[i] = column
    return values


def text_features(tokens) -> dict:
    """tokens: the characters of a text (a char-level run's tokens) -> {feature: (T,) float64}."""
    chars = [token if len(token) == 1 else "\0" for token in tokens]  # <unk> is no character
    return {"inside quotes": inside_quotes(chars), "inside parentheses": inside_parentheses(chars),
            "position in line": position_in_line(chars),
            "after a space": np.array([ch == " " for ch in chars], float),
            "vowel": np.array([ch in VOWELS for ch in chars], float)}


def correlations(feature, states) -> np.ndarray:
    """Pearson's r of a feature (T,) with every unit of states (T, L, S, H) -> (L, S, H),
    NaN for a unit that does not vary; a feature that does not vary -> all NaN."""
    x = feature - feature.mean()
    a = states.astype(np.float64).reshape(len(feature), -1)
    a = a - a.mean(axis=0)
    norms = np.sqrt((x @ x) * np.einsum("ti,ti->i", a, a))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(norms > 0, (x @ a) / np.where(norms > 0, norms, 1), np.nan)
    return r.reshape(states.shape[1:])


def rank_units(tokens, states, state_names, top=TOP_UNITS) -> dict:
    """-> {feature: {"varies": bool, "units": [{layer, state, unit, r}, ...], "r": [...]}}: per
    feature the `top` units of every layer and state with the largest |r|, strongest first, and
    r of every unit (flattened from (L, S, H); null where a unit does not vary)."""
    ranked = {}
    for name, feature in text_features(tokens).items():
        r = correlations(feature, states)
        varies = bool(feature.std() > 0)
        flat = np.nan_to_num(np.abs(r), nan=-1.0).reshape(-1)
        best = np.argsort(-flat, kind="stable")[:top] if varies else []
        units = []
        for k in best:
            if flat[k] < 0:
                break
            layer, state, unit = np.unravel_index(k, r.shape)
            units.append({"layer": int(layer), "state": state_names[state], "unit": int(unit),
                          "r": round(float(r[layer, state, unit]), 4)})
        every = [None if np.isnan(x) else round(float(x), 4) for x in r.reshape(-1)]
        ranked[name] = {"varies": varies, "units": units, "r": every}
    return ranked
