"""Code that runs inside pipeline components. torch and torchtune stay in this package."""
