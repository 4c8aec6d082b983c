"""Understanding benchmarks: VLMEvalKit TSV / parquet / scenes readers (`benchmark_items`), named
answer parsers (`answer_parsers`), MME / POPE / CircularEval / multiple-choice scorers
(`qa_scores`), saved predictions (`predictions`), model adapters (`vlm_adapter`), runs and
re-scoring (`understanding_run`), the report section (`understanding_report`)."""
