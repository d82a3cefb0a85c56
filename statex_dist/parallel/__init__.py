"""Process groups, the DeepSpeed mpu, and the tensor-parallel pieces megatron-core lacks."""
