"""The stages as torchx components: the same training code on Slurm, Kubernetes or this machine.

`app` builds one stage's AppDef (pure), `stages` holds the torchx components
(`torchx run forgeline.components.stages:pretrain --config FILE`), `pipeline` turns a forgeline
manifest into torchx launches in dependency order (`forgeline torchx PIPELINE.yaml`). Built from
the API models the operator uses; never imports the operator, the local runner or a cluster
client, and nothing but the CLI imports it, so torchx stays an optional extra (`forgeline[torchx]`).
"""
