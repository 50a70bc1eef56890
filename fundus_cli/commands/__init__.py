"""One module per command, each the command's home: its config, its steps and its result.

    phantoms.py   fundus phantoms        ingest/      fundus ingest
    train.py      fundus train           sample.py    fundus sample
    evaluate.py   fundus evaluate        audit/       fundus audit-privacy
    report/       fundus report          demo.py      fundus demo
    info.py       fundus info

They sit below `fundus_cli.api` (which imports them lazily) and above the libraries
(data/, models/, training/, metrics/, privacy/); tests/test_import_contract.py enforces that.
"""
