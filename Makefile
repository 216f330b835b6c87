# Each target sets up its own virtual environment (.venv) from pyproject.toml, pinned by
# constraints.txt (torch 2.13.0 CPU build on these machines; see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ROWS   ?= 300000

.PHONY: run test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/deepfm data generate --rows $(ROWS) --seed 0 --out feature_repo/data
	$(BIN)/deepfm features apply
	$(BIN)/deepfm features materialize --incremental
	$(BIN)/deepfm pipeline run-local

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/deepfm data generate --rows 1000000 --seed 0 --out data/bench
	$(BIN)/python benchmarks/train_throughput.py --data data/bench/flat.parquet --label clk \
		--categorical user_id,adgroup_id,pid,age_level,gender,shopping_level,occupation,city_level,cms_segid,cate_id,campaign_id,customer_id,brand \
		--numeric price --embedding-dim 16 --hidden 256,128,64 --batch-size 4096 --epochs 1 --threads 2
	$(BIN)/python benchmarks/step_vs_bound.py --data data/bench/flat.parquet --label clk \
		--categorical user_id,adgroup_id,pid,age_level,gender,shopping_level,occupation,city_level,cms_segid,cate_id,campaign_id,customer_id,brand \
		--numeric price --threads 2

clean:
	rm -rf $(VENV) data artifacts .pytest_cache
