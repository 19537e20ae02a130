"""Markdown summary of a winrates.csv (the win-rate tables in docs/findings.md are printed by this).

    python bench/winrate_table.py results/winrates.csv [temperature]
"""

import sys

import pandas as pd


def main(path: str, temperature: float = 0.7) -> None:
    w = pd.read_csv(path)
    w = w[w["temperature"] == temperature]
    w["cell"] = w.apply(lambda r: f"{r.win_rate:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]", axis=1)
    w["comparison"] = w["policy_a"] + " vs " + w["policy_b"]
    table = w.pivot_table(index=["eval_set", "scorer", "comparison"], columns="split", values="cell",
                          aggfunc="first", sort=False)
    print(f"Win-rate of A over B at T = {temperature} (ties count half) [95% score interval over prompts]\n")
    print("| eval set | scorer | A vs B | " + " | ".join(table.columns) + " |")
    print("|---|---|---|" + "---|" * len(table.columns))
    for (eval_set, scorer, comparison), row in table.iterrows():
        print(f"| {eval_set} | {scorer} | {comparison} | " + " | ".join(row.fillna("")) + " |")


if __name__ == "__main__":
    main(sys.argv[1], *(float(a) for a in sys.argv[2:3]))
