"""Lower bounds: the slot model's (:mod:`.slot`), in seconds for every schedule
(:mod:`.work`), on clusters (:mod:`.cluster`), and the suite of all of them
(:mod:`.suite`)."""
