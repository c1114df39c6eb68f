"""SL-CAI programs: critique -> revision data, the fine-tuning mix, supervised fine-tuning."""
