"""The longest test files first: the test command runs files whole on two workers
(``-n 2 --dist loadfile``), which take files in the order collected, so a long file collected
last (test_study.py, test_workflow.py sort late) would leave the other worker idle at the end."""

LONGEST_FIRST = ["test_study.py", "test_distributed.py", "test_generation_vllm.py", "test_workflow.py",
                 "test_smollm2.py", "test_bench.py", "test_slurm.py", "test_ultrafeedback.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
