"""Records the lab writes besides the tracker's metrics: the runner's
training and evaluation records and the built-in interventions' resets,
declared in the metric catalog (metrics/catalog.py) so that every record
name the lab writes has its definition, unit and place in one table."""
from plasticity_lab.metrics.catalog import declare

declare("train/loss", when="log", title="training loss", unit="loss",
        definition="loss of the pre-update predictions over the last `train.log_every` steps")
declare("train/online_acc", when="log", title="online accuracy", unit="accuracy",
        definition="accuracy of each prediction made before the update on it (Dohare et al. 2024), over the last "
                   "`train.log_every` steps")
declare("train/task_online_acc", when="task_end", title="online accuracy per task", unit="accuracy",
        panel="Plasticity", definition="online accuracy over the whole task")
declare("train/task_loss", when="task_end", title="online loss per task", unit="loss",
        definition="online (pre-update) loss over the whole task; for regression streams, the online squared error")
declare("perf/examples_per_s", when="task_end", title="training speed", unit="examples / s",
        definition="examples trained per second of the training loop so far")
declare("eval/acc/task", per="task", when="eval", title="test accuracy on task j", unit="accuracy",
        definition="test accuracy on task j after training the current task (R[i][j])")
declare("eval/avg_accuracy", when="eval", title="average test accuracy on seen tasks", unit="accuracy",
        panel="Forgetting", definition="ACC: mean test accuracy over the evaluated tasks (Lopez-Paz & Ranzato 2017)")
declare("eval/pooled_accuracy", when="eval", title="pooled test accuracy on seen tasks", unit="accuracy",
        panel="Forgetting", definition="correct predictions over every test example of the evaluated tasks "
        "(the union of their test sets; Keskinen's Hard ASH code scores this way)")
declare("eval/bwt", when="eval", title="backward transfer", unit="accuracy difference", panel="Forgetting",
        definition="BWT: mean of R[T][j] - R[j][j] over earlier tasks (Lopez-Paz & Ranzato 2017)")
declare("eval/forgetting", when="eval", title="forgetting (Chaudhry)", unit="accuracy difference", panel="Forgetting",
        definition="mean over earlier tasks of the best earlier accuracy minus the current one (Chaudhry et al. 2018)")
declare("cbp/replaced", per="layer", when="intervention", title="units replaced by continual backprop", unit="units",
        definition="units continual backprop replaced in this step")
declare("redo/reset", per="layer", when="intervention", title="units reset by ReDo", unit="units",
        definition="tau-dormant units ReDo reset")
declare("reset/layers", when="intervention", title="layers reset", unit="layers",
        definition="layers the reset intervention re-initialised")
