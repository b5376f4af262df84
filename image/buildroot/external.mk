include $(sort $(wildcard $(BR2_EXTERNAL_MAILSLOT_PATH)/package/*/*.mk))
