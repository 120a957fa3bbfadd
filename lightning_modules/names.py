"""Names of the cells, importable without torch (params validation uses them)."""

LSTM_NAMES = ("lstm", "lstm-v", "lstm-nig", "lstm-nfg", "lstm-nog", "lstm-niaf", "lstm-noaf", "lstm-np", "lstm-cifg", "lstm-fgr")
CELLS = ("rnn", "gru", "gru-lecture", *LSTM_NAMES)
FUSED = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}  # cells the fused kernels run
