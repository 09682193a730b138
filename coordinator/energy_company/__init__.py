"""Energy companies in the market: their price events over OpenADR 2.0b
(ven.py, events.py) feeding the household planner's import price."""
