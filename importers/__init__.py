"""Moving from MRTG, Munin and SmokePing: their configs as our config stanzas, their history
into our RRD files (through `monitor.store`), so that years of graphs and the 95th percentile
carry on. Each tool has one module that reads its files and returns a `Plan` (`plan.py`);
`commands.py` is the `monitor import` command that shows and carries out a plan."""
