"""One organism: model + estimator + evolution step; wire messages; ZeroMQ transport."""
